"""The job model a service runs: records in SQLite under the data dir, one worker per engine set, jobs in
submission order, each an ``Outpainter.outpaint_file`` call with its own work dir, cancel token and progress.

    DATA/jobs.sqlite3         one row per job (status, options, progress, outputs, error, times)
    DATA/jobs/ID/input.EXT    the upload, moved here when the job is accepted
    DATA/jobs/ID/work/        the job's checkpoints (runtime/workdir.py) while it runs
    DATA/jobs/ID/out_LABEL.mp4  the results

Nothing is lost on a crash: a queued job stays queued, and a job found "running" when the queue opens (its
process was killed) goes back to the head of the queue and resumes from its work dir, finishing with the
output an uninterrupted run gives. Ids are random (``secrets``); no request field ever becomes a path.
"""
from __future__ import annotations

import argparse
import json
import logging
import secrets
import shutil
import sqlite3
import threading
import time
from pathlib import Path

from m3ddm.errors import Cancelled, InputError, first_line
from runtime import cli
from runtime.settings import Settings
from runtime.streaming import output_paths

log = logging.getLogger(__name__)

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED = ("succeeded", "failed", "cancelled")
SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".m4v", ".avi", ".gif", ".png", ".jpg")
PROGRESS_EVERY_S = 0.5  # at most this often a running job's progress is written


FORM_FIELDS = ("ratio", "pad", "steps", "seed", "sampler", "strides", "guidance")  # a job's options, as text


def settings_from_form(form: dict) -> Settings:
    """A job's Settings from its text fields (FORM_FIELDS, parsed as the command line parses them), checked."""
    def numbers(name, kind, n=None):
        text = form.get(name)
        if text in (None, ""):
            return None
        try:
            return tuple(cli.csv(kind, n)(text))
        except argparse.ArgumentTypeError as exc:
            raise InputError(f"{name}: {exc}") from None

    unknown = sorted(set(form) - set(FORM_FIELDS))
    if unknown:
        raise InputError(f"unknown field(s): {', '.join(unknown)}")
    steps, seed = numbers("steps", int, 1), numbers("seed", int, 1)
    pad = numbers("pad", int, 4)
    s = Settings.build(ratio=() if pad else (form.get("ratio") or "9:16"), pad=pad,
                       steps=steps[0] if steps else None, seed=seed[0] if seed else None,
                       sampler=form.get("sampler") or None, strides=numbers("strides", int),
                       guidance=numbers("guidance", float, 2))
    s.check()
    return s


class JobStore:
    """Job records in SQLite (WAL, one connection per thread); every change is one transaction."""

    def __init__(self, path):
        self.path = Path(path)
        self._local = threading.local()
        with self._db() as db:
            db.execute("""CREATE TABLE IF NOT EXISTS jobs (
                id TEXT PRIMARY KEY, seq INTEGER, status TEXT NOT NULL, options TEXT NOT NULL, input TEXT NOT NULL,
                progress TEXT, outputs TEXT, error TEXT, created REAL NOT NULL, started REAL, finished REAL)""")
            db.execute("CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq)")

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.row_factory = sqlite3.Row
            self._local.db = db
        return _Transaction(db)

    @staticmethod
    def _record(row) -> dict | None:
        if row is None:
            return None
        job = dict(row)
        for key in ("options", "progress", "outputs"):
            job[key] = json.loads(job[key]) if job[key] else None
        job.pop("seq", None)
        return job

    def add(self, job_id: str, options: dict, input_name: str) -> dict:
        with self._db() as db:
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
            db.execute("INSERT INTO jobs (id, seq, status, options, input, created) VALUES (?, ?, 'queued', ?, ?, ?)",
                       (job_id, seq, json.dumps(options), input_name, time.time()))
        return self.get(job_id)

    def get(self, job_id: str) -> dict | None:
        with self._db() as db:
            return self._record(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def list(self, limit: int = 50, offset: int = 0) -> list[dict]:
        with self._db() as db:
            rows = db.execute("SELECT * FROM jobs ORDER BY seq DESC LIMIT ? OFFSET ?", (limit, offset)).fetchall()
        return [self._record(r) for r in rows]

    def counts(self) -> dict:
        with self._db() as db:
            rows = db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        return {s: 0 for s in STATUSES} | {r[0]: r[1] for r in rows}

    def claim_next(self) -> dict | None:
        """The oldest queued job, now running (one transaction: two workers never claim the same job)."""
        with self._db() as db:
            row = db.execute("SELECT id FROM jobs WHERE status = 'queued' ORDER BY seq LIMIT 1").fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET status = 'running', started = COALESCE(started, ?) WHERE id = ?",
                       (time.time(), row[0]))
        return self.get(row[0])

    def requeue_running(self) -> list[str]:
        """Jobs left 'running' by a process that died: back to the head of the queue (they resume)."""
        with self._db() as db:
            ids = [r[0] for r in db.execute("SELECT id FROM jobs WHERE status = 'running'").fetchall()]
            if ids:
                first = db.execute("SELECT COALESCE(MIN(seq), 0) FROM jobs").fetchone()[0]
                for k, job_id in enumerate(ids):
                    db.execute("UPDATE jobs SET status = 'queued', seq = ? WHERE id = ?", (first - len(ids) + k, job_id))
        return ids

    def set_progress(self, job_id: str, progress: dict) -> None:
        with self._db() as db:
            db.execute("UPDATE jobs SET progress = ? WHERE id = ?", (json.dumps(progress), job_id))

    def finish(self, job_id: str, status: str, outputs: dict | None = None, error: str | None = None) -> None:
        assert status in STATUSES, status
        with self._db() as db:
            db.execute("UPDATE jobs SET status = ?, outputs = ?, error = ?, finished = ? WHERE id = ?",
                       (status, json.dumps(outputs) if outputs is not None else None, error,
                        time.time() if status in FINISHED else None, job_id))

    def delete(self, job_id: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def finished_before(self, when: float) -> list[str]:
        with self._db() as db:
            return [r[0] for r in db.execute("SELECT id FROM jobs WHERE finished IS NOT NULL AND finished < ?",
                                              (when,)).fetchall()]


class _Transaction:
    """``with store._db() as db``: BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on an error."""

    def __init__(self, db):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, kind, exc, tb):
        self.db.execute("ROLLBACK" if kind else "COMMIT")
        return False


class JobQueue:
    """Accepts jobs and runs them in submission order, one worker thread per Outpainter (per engine set: one
    per GPU), each job at a time; cancels; drains."""

    def __init__(self, outpainters, data_dir, *, max_queue: int = 100, encode=None):
        self.outpainters = list(outpainters) if isinstance(outpainters, (list, tuple)) else [outpainters]
        self.data = Path(data_dir)
        self.data.mkdir(parents=True, exist_ok=True)
        (self.data / "jobs").mkdir(exist_ok=True)
        self.store = JobStore(self.data / "jobs.sqlite3")
        self.max_queue = max_queue
        self.encode = encode
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._accepting = True
        self._running: dict[str, tuple[threading.Event, object]] = {}  # job id -> (cancel token, its outpainter)
        self.on_finish = None  # callable(job record, seconds, frames or None) after every job (metrics)
        self._lock = threading.Lock()
        for job_id in self.store.requeue_running():
            log.warning(f"job {job_id} was running when the service stopped: it resumes from its checkpoint")
        self.workers = [threading.Thread(target=self._work, args=(op,), name=f"m3ddm-jobs-{k}", daemon=True)
                        for k, op in enumerate(self.outpainters)]

    def start(self) -> "JobQueue":
        for worker in self.workers:
            worker.start()
        return self

    def alive(self) -> bool:
        return all(w.is_alive() for w in self.workers)

    def folder(self, job_id: str) -> Path:
        if not job_id or not all(c.isalnum() or c in "-_" for c in job_id):
            raise InputError("no such job")
        return self.data / "jobs" / job_id

    # -- submitting ---------------------------------------------------------------------------
    def submit(self, upload: Path, filename: str, form: dict) -> dict:
        """Queue the uploaded file ``upload`` (moved under the data dir) with the options of ``form``."""
        if not self._accepting:
            raise QueueClosed("the service is shutting down and accepts no new jobs")
        settings = settings_from_form(form)  # a bad option never enters the queue
        if self.store.counts()["queued"] >= self.max_queue:
            raise QueueFull(f"{self.max_queue} jobs are already waiting; try again later")
        job_id = secrets.token_urlsafe(16)
        folder = self.folder(job_id)
        folder.mkdir()
        suffix = Path(filename or "").suffix.lower()
        target = folder / ("input" + (suffix if suffix in SUFFIXES else ".bin"))
        shutil.move(str(upload), target)
        record = self.store.add(job_id, {**{k: v for k, v in form.items() if v not in (None, "")},
                                         "labels": settings.labels}, target.name)
        self._wake.set()
        return record

    def cancel(self, job_id: str) -> dict | None:
        """Cancel a queued or running job (a running one stops within one step), or delete a finished one."""
        job = self.store.get(job_id)
        if job is None:
            return None
        with self._lock:
            if job_id in self._running:
                cancel, outpainter = self._running[job_id]
                cancel.set()
                outpainter.interrupt()
                return job
            if job["status"] == "queued":
                self.store.finish(job_id, "cancelled")
                self._remove_files(job_id)
                return self.store.get(job_id)
        if job["status"] in FINISHED:
            self._remove_files(job_id)
            self.store.delete(job_id)
        return job

    def result(self, job_id: str, label: str) -> Path | None:
        job = self.store.get(job_id)
        if not job or job["status"] != "succeeded" or label not in (job["outputs"] or {}):
            return None
        return self.folder(job_id) / job["outputs"][label]

    # -- running ------------------------------------------------------------------------------
    def _work(self, outpainter):
        while not self._stop.is_set():
            with self._lock:  # claimed and marked ours at once: a cancel sees it queued or running, never between
                job = self.store.claim_next() if self._accepting else None
                if job is not None:
                    cancel = threading.Event()
                    self._running[job["id"]] = (cancel, outpainter)
            if job is None:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            self._run(job, cancel, outpainter)

    def _run(self, job: dict, cancel: threading.Event, outpainter):
        job_id = job["id"]
        folder = self.folder(job_id)
        form = {k: v for k, v in job["options"].items() if k != "labels"}
        last = [0.0]

        def progress(event):
            now = time.monotonic()
            if event.get("stage") != "sample" or now - last[0] < PROGRESS_EVERY_S:
                return
            last[0] = now
            self.store.set_progress(job_id, {"fraction": round(event["fraction"], 4), "stage": "sample",
                                             "windows_done": event["windows_done"], "windows": event["windows"],
                                             "eta_s": None if event["eta_s"] is None else round(event["eta_s"], 1)})

        t0, frames = time.monotonic(), None
        try:
            settings = settings_from_form(form)
            paths = output_paths(folder / "out.mp4", settings.labels)
            frames = outpainter.outpaint_file(folder / job["input"], folder / "out.mp4", settings=settings,
                                          encode=self.encode, progress=progress, cancel=cancel,
                                          work_dir=folder / "work")["frames"]
            self.store.set_progress(job_id, {"fraction": 1.0, "stage": "finish"})
            self.store.finish(job_id, "succeeded", outputs={label: p.name for label, p in paths.items()})
        except Cancelled:
            if self._stop.is_set():  # draining: the checkpoint stays, the job resumes on the next start
                self.store.finish(job_id, "queued")
            else:
                self.store.finish(job_id, "cancelled")
                self._remove_files(job_id)
        except Exception as exc:  # the job fails with the command line's one line; the service goes on
            self.store.finish(job_id, "failed", error=first_line(exc))
            self._remove_files(job_id)
        finally:
            with self._lock:
                self._running.pop(job_id, None)
            record = self.store.get(job_id)
            if self.on_finish is not None and record is not None and record["status"] in FINISHED:
                try:
                    self.on_finish(record, time.monotonic() - t0, frames)
                except Exception:
                    log.exception("the on_finish hook failed")

    def _remove_files(self, job_id: str) -> None:
        shutil.rmtree(self.folder(job_id), ignore_errors=True)

    # -- stopping -----------------------------------------------------------------------------
    def drain(self, timeout: float = 60.0) -> None:
        """Stop accepting jobs, checkpoint the running one (it resumes on the next start), stop the worker."""
        self._accepting = False
        self._stop.set()
        with self._lock:
            for cancel, outpainter in self._running.values():
                cancel.set()
                outpainter.interrupt()
        self._wake.set()
        for worker in self.workers:
            if worker.is_alive():
                worker.join(timeout)

    def expire(self, keep_hours: float) -> int:
        """Remove finished jobs older than ``keep_hours`` with their files; returns how many."""
        ids = self.store.finished_before(time.time() - keep_hours * 3600)
        for job_id in ids:
            self._remove_files(job_id)
            self.store.delete(job_id)
        return len(ids)


class QueueFull(InputError):
    """More jobs are waiting than the service takes."""


class QueueClosed(InputError):
    """The service is draining."""
