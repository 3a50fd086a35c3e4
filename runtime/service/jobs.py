"""The job model a service runs: records in SQLite under the data dir (runtime/service/store.py), one worker per
engine set, jobs in submission order, each an ``Outpainter.outpaint_file`` call with its own work dir, cancel
token and progress.

    DATA/jobs.sqlite3         one row per job (status, options, progress, outputs, error, times)
    DATA/uploads/             uploads while they arrive (runtime/service/upload.py)
    DATA/jobs/ID/input.EXT    the upload, moved here when the job is accepted (GET /v1/jobs/{id}/source)
    DATA/jobs/ID/work/        the job's checkpoints (runtime/workdir.py) while it runs
    DATA/jobs/ID/out_LABEL.mp4  the results
    DATA/jobs/ID/preview.jpg  the latest preview while it runs (runtime/preview.py), kept with the results

Nothing is lost on a crash: a queued job stays queued, and a job found "running" when the queue opens (its
process was killed) goes back to the head of the queue and resumes from its work dir, finishing with the
output an uninterrupted run gives; files that belong to no job (an upload cut off, a job deleted just before
the crash) are removed then. Ids are random (``secrets``); no request field ever becomes a path.

A full data disk fails the job it stopped with one line, after removing that job's files (which gives the room
to record it); where even that cannot be written the worker waits for space, saying why on /readyz, and goes on.
"""
from __future__ import annotations

import logging
import secrets
import shutil
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from m3ddm.errors import Cancelled, InputError, first_line
from runtime.callbacks import FileOutpainter, event_record
from runtime.options import FORM_FIELDS, settings_from_form  # noqa: F401 (FORM_FIELDS: the API)
from runtime.preview import PreviewOptions
from runtime.service.disk import DiskFull, free_mb, full, is_full
from runtime.service.events import PREVIEW, JobEvents
from runtime.service.form import check_form
from runtime.service.store import FINISHED, STATUSES, JobStore  # noqa: F401 (STATUSES, JobStore: the API)
from runtime.streaming import output_paths
from runtime.video import duration

log = logging.getLogger(__name__)

SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".m4v", ".avi", ".gif", ".png", ".jpg")
PROGRESS_EVERY_S = 0.5  # at most this often a running job's progress is written
RETRY_S = 1.0  # how often a worker that could not write (a full disk) tries again
MIN_FREE_MB = 1.0  # less free under the data dir and the service is not ready: no job could be stored
DISK_FULL = "the service's data disk is full: the job stopped and its files were removed; submit it again later"


class JobQueue:
    """Accepts jobs and runs them in submission order, one worker thread per Outpainter (per engine set: one
    per GPU), each job at a time; deletes (stopping a running job within one step); drains."""

    def __init__(self, outpainters: FileOutpainter | Sequence[FileOutpainter], data_dir, *, max_queue: int = 100,
                 encode=None):
        self.outpainters = list(outpainters) if isinstance(outpainters, (list, tuple)) else [outpainters]
        self.data = Path(data_dir)
        self.uploads = self.data / "uploads"
        for folder in (self.data, self.data / "jobs", self.uploads):
            folder.mkdir(parents=True, exist_ok=True)
        self.store = JobStore(self.data / "jobs.sqlite3")
        self.max_queue = max_queue
        self.encode = encode
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._accepting = True
        # job id -> (cancel token, its outpainter)
        self._running: dict[str, tuple[threading.Event, FileOutpainter]] = {}
        self._problem: str | None = None  # why the workers cannot go on just now (a full disk), or None
        self.on_finish = None  # callable(job record, seconds, frames or None) after every job (metrics)
        self._lock = threading.Lock()
        self.events = JobEvents()  # what GET /v1/jobs/{id}/events streams
        for job_id in self.store.requeue_running():
            log.warning(f"job {job_id} was running when the service stopped: it resumes from its checkpoint")
        self._sweep()
        self.workers = [threading.Thread(target=self._work, args=(op,), name=f"m3ddm-jobs-{k}", daemon=True)
                        for k, op in enumerate(self.outpainters)]

    def start(self) -> JobQueue:
        for worker in self.workers:
            worker.start()
        return self

    def alive(self) -> bool:
        return all(w.is_alive() for w in self.workers)

    def problem(self) -> str | None:
        """Why the queue cannot run jobs now (one line), or None when it can."""
        if not self.alive():
            return "the job worker is not running"
        if self._problem is None and free_mb(self.data) < MIN_FREE_MB:
            return f"the service's data disk is full ({free_mb(self.data):.1f} MB free)"
        return self._problem

    def folder(self, job_id: str) -> Path:
        if not job_id or not all(c.isalnum() or c in "-_" for c in job_id):
            raise InputError("no such job")
        return self.data / "jobs" / job_id

    # -- submitting ---------------------------------------------------------------------------
    def submit(self, upload: Path, filename: str, form: dict) -> dict:
        """Queue the uploaded file ``upload`` (moved under the data dir) with the options of ``form``."""
        if not self._accepting:
            raise QueueClosed("the service is shutting down and accepts no new jobs")
        check_form(form)
        settings = settings_from_form(form)  # a bad option never enters the queue
        if self.store.counts()["queued"] >= self.max_queue:
            raise QueueFull(f"{self.max_queue} jobs are already waiting; try again later")
        job_id = secrets.token_urlsafe(16)
        folder = self.folder(job_id)
        suffix = Path(filename or "").suffix.lower()
        target = folder / ("input" + (suffix if suffix in SUFFIXES else ".bin"))
        try:
            folder.mkdir()
            shutil.move(str(upload), target)
            source = {"name": (filename or "")[:255], "bytes": target.stat().st_size, "duration_s": duration(target)}
            record = self.store.add(job_id, {**form, "labels": settings.labels}, target.name, source)
        except BaseException as exc:
            shutil.rmtree(folder, ignore_errors=True)
            if is_full(exc) and not isinstance(exc, DiskFull):
                raise full("the job cannot be stored", self.data) from exc
            raise
        self._wake.set()
        return record

    def delete(self, job_id: str) -> dict | None:
        """Remove a job and its files; returns its record as it was, or None when there is no such job (of two
        calls for one job, one gets the record). A running job stops within one step, and its worker removes
        its files (and its record, where a full disk kept this call from it)."""
        with self._lock:  # a worker claims and lets go of its job under this lock: it is running or it is not
            running = self._running.get(job_id)
            if running is None:
                self._remove_files(job_id)  # first: on a full disk, the room the record's removal needs
                return self.store.delete(job_id)
            cancel, outpainter = running
            cancel.set()
            outpainter.interrupt()
            try:
                return self.store.delete(job_id)
            except DiskFull:
                return self.store.get(job_id)  # its worker deletes it, once the job's files have made room

    def result(self, job_id: str, label: str) -> Path | None:
        job = self.store.get(job_id)
        if not job or job["status"] != "succeeded" or label not in (job["outputs"] or {}):
            return None
        return self.folder(job_id) / job["outputs"][label]

    # -- running ------------------------------------------------------------------------------
    def _work(self, outpainter: FileOutpainter):
        while not self._stop.is_set():
            try:
                with self._lock:  # claimed and marked ours at once: a DELETE sees it queued or running
                    job = self.store.claim_next() if self._accepting else None
                    if job is not None:
                        cancel = threading.Event()
                        self._running[job["id"]] = (cancel, outpainter)
                self._problem = None
                if job is None:
                    self._wake.wait(1.0)
                    self._wake.clear()
                    continue
                self._run(job, cancel, outpainter)
            except DiskFull as exc:
                self._wait_for_space(exc)
            except Exception as exc:  # a bug, or a store that cannot be read: said, and the worker goes on
                log.error(f"the job worker goes on after an error: {first_line(exc)}", exc_info=True)
                self._problem = first_line(exc)
                self._stop.wait(RETRY_S)

    def _run(self, job: dict, cancel: threading.Event, outpainter: FileOutpainter):
        job_id = job["id"]
        folder = self.folder(job_id)
        form = {k: v for k, v in job["options"].items() if k != "labels"}
        t0, frames = time.monotonic(), None
        try:
            settings = settings_from_form(form)
            paths = output_paths(folder / "out.mp4", settings.labels)
            frames = outpainter.outpaint_file(folder / job["input"], folder / "out.mp4", settings=settings,
                                              encode=self.encode, progress=self._progress(job_id), cancel=cancel,
                                              work_dir=folder / "work", preview=PreviewOptions(
                                                  form="number", path=str(folder / PREVIEW)))["frames"]
            end = {"status": "succeeded", "outputs": {label: p.name for label, p in paths.items()},
                   "progress": {"fraction": 1.0, "stage": "finish"}}
        except Cancelled:  # draining: the checkpoint stays, the job resumes on the next start (else: deleted)
            end = {"status": "queued"}
        except Exception as exc:  # the job fails with the command line's one line; the service goes on
            self._remove_files(job_id)  # first: on a full disk this is the room to record the failure in
            end = {"status": "failed", "error": self._public(DISK_FULL if is_full(exc) else first_line(exc), job)}
        deleted = cancel.is_set() and not self._stop.is_set()  # while it ran, or just as it ended
        if deleted:
            self._remove_files(job_id)  # first: on a full disk, the room to delete its record in
        recorded = self._record_end(job_id, None if deleted else end)
        self.events.end(job_id)
        if not recorded:
            self._remove_files(job_id)  # its record was deleted while it ran
            return
        record = self.store.get(job_id)
        if self.on_finish is not None and record is not None and record["status"] in FINISHED:
            try:
                self.on_finish(record, time.monotonic() - t0, frames)
            except Exception:
                log.exception("the on_finish hook failed")

    def _progress(self, job_id: str):
        last = [0.0]

        def progress(event):
            self.events.publish(job_id, event_record(event))
            now = time.monotonic()
            if event.get("stage") != "sample" or now - last[0] < PROGRESS_EVERY_S:
                return
            last[0] = now
            try:
                self.store.set_progress(job_id, {
                    "fraction": round(event["fraction"], 4), "stage": "sample", "windows_done": event["windows_done"],
                    "windows": event["windows"], "eta_s": None if event["eta_s"] is None else round(event["eta_s"], 1)})
            except DiskFull:
                pass  # progress is a hint: the job goes on, and its end is what must be recorded
        return progress

    def _record_end(self, job_id: str, end: dict | None) -> bool:
        """Write a job's end (JobStore.finish's fields; None: deleted, its record goes where a full disk kept the
        DELETE from it) and let go of it, both under the lock; False when it has no record any more. A full
        disk is waited out: the job stays "running" until its end fits (or the service stops, and the next
        start requeues it)."""
        while True:
            try:
                with self._lock:
                    if end is None:
                        self.store.delete(job_id)
                    recorded = end is not None and self.store.finish(job_id, **end)
                    self._running.pop(job_id, None)
                self._problem = None
                return recorded
            except DiskFull as exc:
                if self._stop.is_set():
                    with self._lock:
                        self._running.pop(job_id, None)
                    return True
                self._wait_for_space(exc)

    def _wait_for_space(self, exc: DiskFull) -> None:
        line = f"{first_line(exc)}; the job worker waits for space"
        if line != self._problem:
            log.warning(line)
        self._problem = line
        self._stop.wait(RETRY_S)

    def _public(self, line: str, job: dict) -> str:
        """A failure's line without the server's own paths: the upload is "the upload"."""
        return line.replace(str(self.folder(job["id"]) / job["input"]), "the upload").replace(str(self.data), "DATA")

    def _remove_files(self, job_id: str) -> None:
        try:
            shutil.rmtree(self.folder(job_id), ignore_errors=True)
        except InputError:
            pass  # not an id: no files

    def _sweep(self) -> None:
        """Remove what belongs to no job: uploads a crash cut off, a job folder whose record was deleted."""
        for path in self.uploads.iterdir():
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        known = self.store.ids()
        for folder in (self.data / "jobs").iterdir():
            if folder.name not in known:
                shutil.rmtree(folder, ignore_errors=True)

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
        """Remove finished jobs older than ``keep_hours`` with their files (files first: on a full disk that
        is the room the records' removal needs); returns how many."""
        ids = self.store.finished_before(time.time() - keep_hours * 3600)
        for job_id in ids:
            self._remove_files(job_id)
            self.store.delete(job_id)
        return len(ids)


class QueueFull(InputError):
    """More jobs are waiting than the service takes."""


class QueueClosed(InputError):
    """The service is draining."""
