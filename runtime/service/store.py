"""The job records: one SQLite file under the data dir (WAL, one connection per thread), every change one
transaction, so that two requests, or a request and the worker, never see a job half changed.

A deletion is one statement that hands back what it deleted: of two DELETEs of one job exactly one gets the
record (and removes the files), the other finds nothing. A write the disk has no room for raises DiskFull.
"""
from __future__ import annotations

import builtins
import json
import sqlite3
import threading
import time
from pathlib import Path

from runtime.service.disk import DiskFull, full, is_full

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")  # cancelled: records of earlier versions
FINISHED = ("succeeded", "failed", "cancelled")


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
            if "source" not in {r[1] for r in db.execute("PRAGMA table_info(jobs)")}:  # records of earlier versions
                db.execute("ALTER TABLE jobs ADD COLUMN source TEXT")

    def _db(self) -> _Transaction:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.row_factory = sqlite3.Row
            self._local.db = db
        return _Transaction(db, self.path.parent)

    @staticmethod
    def _record(row) -> dict | None:
        return None if row is None else JobStore._job(row)

    @staticmethod
    def _job(row) -> dict:
        job = dict(row)
        for key in ("options", "progress", "outputs", "source"):
            job[key] = json.loads(job[key]) if job[key] else None
        job.pop("seq", None)
        return job

    def add(self, job_id: str, options: dict, input_name: str, source: dict | None = None) -> dict:
        """A new queued job; ``source`` what the API shows of its input (name, bytes, duration_s)."""
        with self._db() as db:
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
            db.execute("INSERT INTO jobs (id, seq, status, options, input, source, created) "
                       "VALUES (?, ?, 'queued', ?, ?, ?, ?)",
                       (job_id, seq, json.dumps(options), input_name, json.dumps(source), time.time()))
            # Read in the same transaction: once it commits, a worker may claim the job before a second read,
            # and the job would be answered "running" where the API promises the 202's "queued".
            return self._job(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def get(self, job_id: str) -> dict | None:
        with self._db() as db:
            return self._record(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def list(self, limit: int = 50, offset: int = 0) -> list[dict]:
        with self._db() as db:
            rows = db.execute("SELECT * FROM jobs ORDER BY seq DESC LIMIT ? OFFSET ?", (limit, offset)).fetchall()
        return [self._job(r) for r in rows]

    def positions(self) -> dict[str, int]:
        """{id: place in the queue} of the queued jobs, 1 the next to run."""
        with self._db() as db:
            rows = db.execute("SELECT id FROM jobs WHERE status = 'queued' ORDER BY seq").fetchall()
        return {r[0]: k for k, r in enumerate(rows, 1)}

    def ids(self) -> set[str]:
        with self._db() as db:
            return {r[0] for r in db.execute("SELECT id FROM jobs").fetchall()}

    def counts(self) -> dict:
        with self._db() as db:
            rows = db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        return {s: 0 for s in STATUSES} | {r[0]: r[1] for r in rows}

    def claim_next(self) -> dict | None:
        """The oldest queued job, now running (one transaction: two workers never claim the same job)."""
        with self._db() as db:
            return self._record(db.execute(
                "UPDATE jobs SET status = 'running', started = COALESCE(started, ?) WHERE id = "
                "(SELECT id FROM jobs WHERE status = 'queued' ORDER BY seq LIMIT 1) RETURNING *",
                (time.time(),)).fetchone())

    # (`list` below is the method above: the type is builtins.list)
    def requeue_running(self) -> builtins.list[str]:
        """Jobs left 'running' by a process that died: back to the head of the queue (they resume)."""
        with self._db() as db:
            ids = [r[0] for r in db.execute("SELECT id FROM jobs WHERE status = 'running'").fetchall()]
            if ids:
                first = db.execute("SELECT COALESCE(MIN(seq), 0) FROM jobs").fetchone()[0]
                for k, job_id in enumerate(ids):
                    db.execute("UPDATE jobs SET status = 'queued', seq = ? WHERE id = ?",
                               (first - len(ids) + k, job_id))
        return ids

    def set_progress(self, job_id: str, progress: dict) -> None:
        with self._db() as db:
            db.execute("UPDATE jobs SET progress = ? WHERE id = ?", (json.dumps(progress), job_id))

    def finish(self, job_id: str, status: str, outputs: dict | None = None, error: str | None = None,
               progress: dict | None = None) -> bool:
        """Record a job's end (and its last progress, when given); False when it has no record any more
        (deleted while it ran)."""
        assert status in STATUSES, status
        with self._db() as db:
            changed = db.execute(
                "UPDATE jobs SET status = ?, outputs = ?, error = ?, finished = ?, progress = COALESCE(?, progress) "
                "WHERE id = ?", (status, json.dumps(outputs) if outputs is not None else None, error,
                                 time.time() if status in FINISHED else None,
                                 json.dumps(progress) if progress is not None else None, job_id)).rowcount
        return changed > 0

    def delete(self, job_id: str) -> dict | None:
        """Remove a job's record; returns it as it was, or None when there was none (or another call won)."""
        with self._db() as db:
            return self._record(db.execute("DELETE FROM jobs WHERE id = ? RETURNING *", (job_id,)).fetchone())

    def finished_before(self, when: float) -> builtins.list[str]:
        with self._db() as db:
            return [r[0] for r in db.execute("SELECT id FROM jobs WHERE finished IS NOT NULL AND finished < ?",
                                              (when,)).fetchall()]


class _Transaction:
    """``with store._db() as db``: BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on an error; a write that does not
    fit on the disk raises DiskFull (SQLite may already have rolled back: then there is nothing to undo)."""

    def __init__(self, db, folder):
        self.db, self.folder = db, folder

    def __enter__(self):
        self._run("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, kind, exc, tb):
        if kind is None:
            try:
                self._run("COMMIT")
            except BaseException:
                self._rollback()
                raise
            return False
        self._rollback()
        if is_full(exc) and not isinstance(exc, DiskFull):
            raise full("the job records cannot be written", self.folder) from exc
        return False

    def _run(self, statement: str) -> None:
        try:
            self.db.execute(statement)
        except sqlite3.Error as exc:
            if is_full(exc):
                raise full("the job records cannot be written", self.folder) from exc
            raise

    def _rollback(self) -> None:
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")
