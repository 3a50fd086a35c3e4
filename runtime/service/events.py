"""What the service keeps of a job's progress for ``GET /v1/jobs/{id}/events`` (Server-Sent Events; the routes are in
runtime/service/app.py) and where its latest preview is (``GET /v1/jobs/{id}/preview``).

Each progress event of a running job (the fields of ``--progress jsonl``, runtime/callbacks.py ``event_record``) is
an SSE ``progress`` event; the stream ends with one ``status`` event, the job as ``GET /v1/jobs/{id}`` shows it
once finished (or ``{"id", "status": "deleted"}``). The server keeps the last RECENT events of each of the last
MAX_JOBS jobs and nothing per client but the id it last sent: a client that reconnects with ``Last-Event-ID`` gets
what it missed when that is still kept, else (as does a new client, or one that reads slower than the job runs)
the latest state, never a backlog. Ids carry the process's boot name, so an id from before a restart is a stale
one, not a wrong one.
"""
from __future__ import annotations

import json
import secrets
import threading
from collections import OrderedDict, deque

RECENT = 32  # events kept per job, for clients that reconnect
MAX_JOBS = 256  # jobs whose events are kept (the oldest forgotten first)
POLL_S = 0.1  # how often a stream looks for new events
CHECK_S = 1.0  # how often a stream reads the job's record (deleted? finished?) while nothing ends it
HEARTBEAT_S = 15.0  # a comment line this often keeps proxies from closing a quiet stream
PREVIEW = "preview.jpg"  # in the job's folder, replaced atomically as the job runs (runtime/preview.py)


class JobEvents:
    """The recent progress events of each job, numbered in one sequence across jobs; thread-safe."""

    def __init__(self):
        self.boot = secrets.token_hex(4)
        self._lock = threading.Lock()
        self._seq = 0
        self._jobs: OrderedDict[str, tuple[deque, list]] = OrderedDict()  # id -> (recent, [forgotten upto, ended])

    def publish(self, job_id: str, event: dict) -> None:
        with self._lock:
            self._seq += 1
            recent, state = self._entry(job_id)
            if len(recent) == RECENT:
                state[0] = recent[0][0]
            recent.append((self._seq, event))

    def end(self, job_id: str) -> None:
        """The job's run is over (its record says how): streams read it now, not at their next check."""
        with self._lock:
            self._entry(job_id)[1][1] = True

    def _entry(self, job_id: str) -> tuple[deque, list]:
        entry = self._jobs.get(job_id)
        if entry is None:
            entry = self._jobs[job_id] = (deque(maxlen=RECENT), [0, False])
            while len(self._jobs) > MAX_JOBS:
                self._jobs.popitem(last=False)
        self._jobs.move_to_end(job_id)
        return entry

    def after(self, job_id: str, last: int | None) -> tuple[list, bool]:
        """(the events to send a client whose last is ``last``, whether the job's run ended): those after it where
        all are kept, else the latest only; none when it is up to date."""
        with self._lock:
            entry = self._jobs.get(job_id)
            if entry is None:
                return [], False
            recent, (forgotten, ended) = entry[0], entry[1]
            if not recent or (last is not None and last >= recent[-1][0]):
                return [], ended
            if last is None or last < forgotten:
                return [recent[-1]], ended
            return [e for e in recent if e[0] > last], ended

    def now(self) -> int:
        return self._seq

    def parse(self, last_event_id: str | None) -> int | None:
        """A client's ``Last-Event-ID``: its number where this process gave it, else None (send the latest)."""
        boot, _, seq = (last_event_id or "").partition(".")
        return int(seq) if boot == self.boot and seq.isdigit() and len(seq) < 19 else None

    def frame(self, seq: int, kind: str, data: dict) -> bytes:
        return f"id: {self.boot}.{seq}\nevent: {kind}\ndata: {json.dumps(data)}\n\n".encode()
