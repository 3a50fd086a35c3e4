"""The service's Prometheus metrics: jobs by status, queue depth, job seconds, frames per second, failures by
reason, retries on restarted Ray workers, the backend, GPU memory in use."""
from __future__ import annotations

import threading

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from runtime.service.jobs import STATUSES, JobQueue


class Metrics:
    """The service's Prometheus metrics (its own registry: several apps may live in one test process)."""
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, queue: JobQueue, backend: str):
        self.registry = r = CollectorRegistry()
        self.jobs = Gauge("m3ddm_jobs", "Jobs by status", ["status"], registry=r)
        self.queue_depth = Gauge("m3ddm_queue_depth", "Jobs waiting", registry=r)
        self.seconds = Histogram("m3ddm_job_seconds", "Wall time of finished jobs", registry=r,
                                 buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, float("inf")))
        self.fps = Gauge("m3ddm_frames_per_second", "Output frames per second of the last job", registry=r)
        self.failures = Counter("m3ddm_job_failures", "Failed jobs by reason", ["reason"], registry=r)
        self.retries = Counter("m3ddm_job_retries", "Job runs started again on a restarted Ray worker (its process "
                               "or node lost); each resumes from its work dir", registry=r)
        self._retries_seen, self._retries_lock = 0, threading.Lock()  # two scrapes at once count each retry once
        self.backend = Gauge("m3ddm_backend_info", "The engine backend", ["backend"], registry=r)
        self.backend.labels(backend=backend).set(1)
        self.gpu_used = Gauge("m3ddm_gpu_memory_used_bytes", "GPU memory in use (where there is a GPU)",
                              registry=r)
        self.queue = queue

    def finished(self, job: dict, seconds: float, frames: int | None) -> None:
        self.seconds.observe(seconds)
        if job["status"] == "succeeded" and frames:
            self.fps.set(frames / max(seconds, 1e-9))
        if job["status"] == "failed":
            self.failures.labels(reason=_reason(job.get("error") or "")).inc()

    def render(self) -> bytes:
        counts = self.queue.store.counts()
        for status in STATUSES:
            self.jobs.labels(status=status).set(counts.get(status, 0))
        self.queue_depth.set(counts.get("queued", 0))
        with self._retries_lock:
            retries = sum(getattr(o, "restarts", 0) for o in self.queue.outpainters)  # RemoteOutpainter's count
            self.retries.inc(retries - self._retries_seen)
            self._retries_seen = retries
        used = _gpu_memory_used()
        if used is not None:
            self.gpu_used.set(used)
        return generate_latest(self.registry)


_NO_GPU: list = []


def _gpu_memory_used() -> int | None:
    """Bytes in use on the current GPU, or None without one (asked once: no GPU stays no GPU)."""
    if _NO_GPU:
        return None
    try:
        from runtime.engines import cuda
        free, total = cuda.mem_info()
        return int(total - free)
    except Exception:
        _NO_GPU.append(True)
        return None


def _reason(error: str) -> str:
    """A small, fixed set of failure reasons (a label per message would grow without bound)."""
    text = error.lower()
    for reason, words in (("disk_full", ("disk is full",)), ("pixel_budget", ("pixel budget",)),
                          ("not_a_video", ("cannot open", "no video stream", "empty", "decod")),
                          ("engines", ("engines", "onnx runtime", "tensorrt")), ("out_of_memory", ("out of memory",))):
        if any(w in text for w in words):
            return reason
    return "other"
