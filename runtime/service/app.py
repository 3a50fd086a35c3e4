"""The HTTP side of the service: a FastAPI app over a JobQueue (runtime/service/jobs.py).

The paths and fields are the contract of DESIGN.md's "Service" line. The app never samples: it validates,
stores uploads under the data dir and answers from the job records; the queue's worker thread does the work.
"""
from __future__ import annotations

import secrets
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from m3ddm.errors import InputError, first_line
from runtime.service.jobs import FORM_FIELDS, STATUSES, JobQueue, QueueClosed, QueueFull

PAGE = Path(__file__).with_name("page.html")


class TooLarge(Exception):
    pass


def _view(job: dict) -> dict:
    """A job record as the API shows it."""
    progress = job.get("progress") or {}
    outputs = job.get("outputs") or {}
    return {"id": job["id"], "status": job["status"],
            "progress": {"fraction": 1.0 if job["status"] == "succeeded" else progress.get("fraction", 0.0),
                         "stage": progress.get("stage", job["status"]),
                         "windows_done": progress.get("windows_done"), "windows": progress.get("windows"),
                         "eta_s": progress.get("eta_s")},
            "error": job.get("error"),
            "outputs": {label: f"/v1/jobs/{job['id']}/result/{label}" for label in outputs},
            "created": job.get("created"), "started": job.get("started"), "finished": job.get("finished")}


class Metrics:
    """The service's Prometheus metrics (its own registry: several apps may live in one test process)."""

    def __init__(self, queue: JobQueue, backend: str):
        self.registry = r = CollectorRegistry()
        self.jobs = Gauge("m3ddm_jobs", "Jobs by status", ["status"], registry=r)
        self.queue_depth = Gauge("m3ddm_queue_depth", "Jobs waiting", registry=r)
        self.seconds = Histogram("m3ddm_job_seconds", "Wall time of finished jobs", registry=r,
                                 buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, float("inf")))
        self.fps = Gauge("m3ddm_frames_per_second", "Output frames per second of the last job", registry=r)
        self.failures = Counter("m3ddm_job_failures", "Failed jobs by reason", ["reason"], registry=r)
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
    for reason, words in (("pixel_budget", ("pixel budget",)), ("not_a_video", ("cannot open", "no video stream",
                          "empty", "decod")), ("engines", ("engines", "onnx runtime", "tensorrt")),
                          ("out_of_memory", ("out of memory",))):
        if any(w in text for w in words):
            return reason
    return "other"


def create_app(queue: JobQueue, *, token: str | None = None, max_upload_mb: float = 2048,
               backend: str = "ort", on_shutdown=None) -> FastAPI:
    """The app; ``on_shutdown()`` runs once the server has stopped accepting requests (e.g. to drain)."""
    @asynccontextmanager
    async def lifespan(app):
        yield
        if on_shutdown is not None:
            on_shutdown()

    app = FastAPI(title="M3DDM video outpainting", version="1", lifespan=lifespan,
                  description="Outpaint videos to another aspect ratio: submit, follow, download.")
    limit = int(max_upload_mb * 2**20)
    metrics = Metrics(queue, backend)
    queue.on_finish = metrics.finished
    uploads = queue.data / "uploads"
    uploads.mkdir(exist_ok=True)

    def authorised(request: Request):
        if token is None:
            return
        given = request.headers.get("authorization", "")
        if not (given.startswith("Bearer ") and secrets.compare_digest(given[7:].encode(), token.encode())):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    v1 = [Depends(authorised)]

    @app.exception_handler(InputError)
    async def input_error(request, exc):  # noqa: ARG001
        return JSONResponse({"detail": first_line(exc)}, status_code=422)

    @app.post("/v1/jobs", status_code=202, dependencies=v1)
    async def submit(request: Request):
        too_large = HTTPException(413, f"the upload is over the limit of {max_upload_mb:g} MB")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit + 64 * 1024:
            raise too_large
        received, original = 0, request.stream

        async def counted():
            nonlocal received
            async for chunk in original():
                received += len(chunk)
                if received > limit + 64 * 1024:  # the form's own fields fit in 64 KB
                    raise TooLarge
                yield chunk

        request.stream = counted  # the form parser reads through this: never more than the limit is stored
        try:
            form = await request.form(max_files=1, max_fields=len(FORM_FIELDS) + 1)
        except TooLarge:
            raise too_large from None
        except Exception as exc:
            raise HTTPException(422, f"not a multipart form with a file: {first_line(exc)}") from None
        try:
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise InputError("the form has no file field")
            fields = {k: v for k, v in form.items() if k != "file"}
            if any(not isinstance(v, str) for v in fields.values()):
                raise InputError("only the file field may be a file")
            with tempfile.NamedTemporaryFile(dir=uploads, delete=False) as tmp:
                while chunk := await upload.read(1 << 20):
                    tmp.write(chunk)
            path = Path(tmp.name)
            try:
                job = queue.submit(path, upload.filename or "", fields)
            finally:
                path.unlink(missing_ok=True)  # moved into the job's folder when accepted
        except QueueFull as exc:
            raise HTTPException(429, first_line(exc)) from None
        except QueueClosed as exc:
            raise HTTPException(503, first_line(exc)) from None
        finally:
            await form.close()
        return {"id": job["id"], "status": job["status"]}

    @app.get("/v1/jobs", dependencies=v1)
    def jobs(limit: int = 50, offset: int = 0):
        limit, offset = max(1, min(limit, 500)), max(0, offset)
        return {"jobs": [_view(j) for j in queue.store.list(limit, offset)], "limit": limit, "offset": offset}

    def _job(job_id: str) -> dict:
        job = queue.store.get(job_id) if len(job_id) < 64 else None
        if job is None:
            raise HTTPException(404, "no such job")
        return job

    @app.get("/v1/jobs/{job_id}", dependencies=v1)
    def job(job_id: str):
        return _view(_job(job_id))

    @app.get("/v1/jobs/{job_id}/result/{label}", dependencies=v1)
    def result(job_id: str, label: str):
        path = queue.result(_job(job_id)["id"], label)
        if path is None or not path.is_file():
            raise HTTPException(404, "no such result (the job has not succeeded, or has no such target)")
        return FileResponse(path, media_type="video/mp4", filename=f"{job_id}_{label}.mp4")

    @app.delete("/v1/jobs/{job_id}", dependencies=v1)
    def delete(job_id: str):
        found = queue.cancel(_job(job_id)["id"])
        after = queue.store.get(job_id)
        return _view(after) if after else {**_view(found), "status": "deleted"}

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz():
        if not queue.alive():
            return JSONResponse({"status": "not ready", "detail": "the job worker is not running"}, status_code=503)
        return {"status": "ready", "backend": backend}

    @app.get("/metrics")
    def prometheus():
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse)
    def page():
        return PAGE.read_text()

    app.state.queue, app.state.started = queue, time.time()
    return app
