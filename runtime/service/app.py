"""The HTTP side of the service: a FastAPI app over a JobQueue (runtime/service/jobs.py).

The paths and fields are the contract of DESIGN.md's "Service" line, declared in the OpenAPI document
(runtime/service/contract.py) with every status a route gives. The app never samples: it validates, stores
uploads under the data dir and answers from the job records; the queue's worker thread does the work.
Every refusal is one line, ``{"detail": ...}``; a method a path does not take is 405 with all those it does.
"""
from __future__ import annotations

import os
import secrets
import time
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import quote

import anyio
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from m3ddm.errors import InputError, first_line
from runtime.service import contract, upload
from runtime.service.disk import DiskFull
from runtime.service.docs import add_docs
from runtime.service.events import CHECK_S, HEARTBEAT_S, POLL_S, PREVIEW
from runtime.service.jobs import JobQueue, QueueClosed, QueueFull
from runtime.service.metrics import Metrics
from runtime.service.store import FINISHED

PAGE = Path(__file__).with_name("page.html")
MAX_OFFSET = 2**63 - 1  # SQLite's largest integer


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
            "outputs": {label: f"/v1/jobs/{quote(job['id'], safe='')}/result/{quote(label, safe='')}"
                        for label in outputs},
            "created": job.get("created"), "started": job.get("started"), "finished": job.get("finished")}


class _OpenedResult(FileResponse):
    """A result sent from the file opened before the answer starts: a DELETE meanwhile removes its name, not
    what is being sent."""

    def __init__(self, file, **options):
        super().__init__(file.name, stat_result=os.fstat(file.fileno()), **options)
        self._file = file

    @asynccontextmanager
    async def _open_file(self):
        yield anyio.wrap_file(self._file)

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._file.close()


def _allowed(app: FastAPI, scope) -> list[str]:
    """Every method some route takes at this request's path."""
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches(scope)
        route_methods = getattr(route, "methods", None)  # the routes that have them: Route, APIRoute
        if match != Match.NONE and route_methods:
            methods |= route_methods
    return sorted(methods)


def _handlers(app: FastAPI) -> None:
    @app.exception_handler(InputError)
    async def input_error(request, exc):  # noqa: ARG001
        return JSONResponse({"detail": first_line(exc)}, status_code=422)

    @app.exception_handler(DiskFull)
    async def disk_full(request, exc):  # noqa: ARG001
        return JSONResponse({"detail": first_line(exc)}, status_code=507)

    @app.exception_handler(upload.Refused)
    async def refused(request, exc):  # noqa: ARG001
        return JSONResponse({"detail": first_line(exc)}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(request, exc):  # noqa: ARG001
        error = (exc.errors() or [{}])[0]
        where = " ".join(str(part) for part in error.get("loc", ()))
        return JSONResponse({"detail": f"{where}: {error.get('msg', 'invalid')}".strip(": ")}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):
        if exc.status_code == 405:
            methods = _allowed(app, request.scope)
            return JSONResponse({"detail": f"{request.method} is not allowed here; use {', '.join(methods)}"},
                                status_code=405, headers={"Allow": ", ".join(methods)})
        return await http_exception_handler(request, exc)


def create_app(queue: JobQueue, *, token: str | None = None, max_upload_mb: float = 2048,
               backend: str = "ort", on_shutdown=None, upload_idle_s: float = 60.0) -> FastAPI:
    """The app; ``on_shutdown()`` runs once the server has stopped accepting requests (e.g. to drain)."""
    @asynccontextmanager
    async def lifespan(app):
        yield
        if on_shutdown is not None:
            on_shutdown()

    app = FastAPI(title="M3DDM video outpainting", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Outpaint videos to another aspect ratio: submit, follow, download.")
    limit = int(max_upload_mb * 2**20)
    metrics = Metrics(queue, backend)
    queue.on_finish = metrics.finished  # type: ignore[assignment]  # JobQueue declares on_finish = None (jobs.py)
    v1, auth = _authorisation(token)
    _handlers(app)

    @app.post("/v1/jobs", status_code=202, dependencies=v1, response_model=contract.Created,
              openapi_extra=contract.job_form(), summary="Submit a video with its options",
              responses=contract.errors(400, *auth, 408, 413, 415, 422, 429, 503, 507))
    async def submit(request: Request):
        form = await upload.receive(request, queue.uploads, limit, upload_idle_s)
        path = form.path
        assert path is not None  # receive() returns only with the file part stored
        try:
            job = queue.submit(path, form.filename, form.fields)
        except QueueFull as exc:
            raise HTTPException(429, first_line(exc)) from None
        except QueueClosed as exc:
            raise HTTPException(503, first_line(exc)) from None
        finally:
            path.unlink(missing_ok=True)  # moved into the job's folder when accepted
        return {"id": job["id"], "status": job["status"]}

    _job_routes(app, queue, v1, auth)
    _operations(app, queue, metrics, backend)
    add_docs(app)
    _head_with_get(app)
    app.state.queue, app.state.started = queue, time.time()
    return app


def _authorisation(token: str | None) -> tuple[list, tuple]:
    """The /v1 routes' dependencies and the status they add: with a token, a bearer scheme (declared in the
    document, so that a client knows it) and 401; without one, none (a document declaring security the
    service does not enforce would be wrong)."""
    if token is None:
        return [], ()
    bearer = HTTPBearer(auto_error=False, description="--token (or $M3DDM_TOKEN)")

    def authorised(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)):
        given = credentials.credentials if credentials is not None else ""
        if not secrets.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})
    return [Depends(authorised)], (401,)


def _job_routes(app: FastAPI, queue: JobQueue, v1: list, auth: tuple) -> None:
    """The routes of submitted jobs: list, one, its results, delete."""
    @app.get("/v1/jobs", dependencies=v1, response_model=contract.Jobs, summary="The jobs, newest first",
             responses=contract.errors(*auth, 422))
    def jobs(limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0, le=MAX_OFFSET)):
        return {"jobs": [_view(j) for j in queue.store.list(limit, offset)], "limit": limit, "offset": offset}

    def _job(job_id: str) -> dict:
        job = queue.store.get(job_id) if len(job_id) < 64 else None
        if job is None:
            raise HTTPException(404, "no such job")
        return job

    @app.get("/v1/jobs/{job_id}", dependencies=v1, response_model=contract.Job, summary="A job",
             responses=contract.errors(*auth, 404, 422))
    def job(job_id: str):
        return _view(_job(job_id))

    @app.get("/v1/jobs/{job_id}/result/{label}", dependencies=v1, response_class=Response,
             summary="A result (range requests: a browser can seek)",
             responses={200: contract.video("the mp4"), 206: contract.video("the range asked for"),
                        400: contract.plain("a malformed Range header"), 416: contract.plain("a range past the end"),
                        **contract.errors(*auth, 404, 422)})
    def result(job_id: str, label: str):
        path = queue.result(_job(job_id)["id"], label)
        try:
            file = open(path, "rb") if path is not None else None  # noqa: SIM115 (closed by the response)
        except (FileNotFoundError, IsADirectoryError):
            file = None  # deleted meanwhile
        if file is None:
            raise HTTPException(404, "no such result (the job has not succeeded, or has no such target)")
        return _OpenedResult(file, media_type="video/mp4", filename=f"{job_id}_{label}.mp4")

    @app.delete("/v1/jobs/{job_id}", dependencies=v1, response_model=contract.Deleted,
                summary="Delete a job with its files (a queued or running one is cancelled: within one step)",
                responses=contract.errors(*auth, 404, 422, 507))
    def delete(job_id: str):
        found = queue.delete(job_id) if len(job_id) < 64 else None
        if found is None:
            raise HTTPException(404, "no such job")
        return {**_view(found), "status": "deleted"}

    _live_routes(app, queue, v1, auth, _job)


def _live_routes(app: FastAPI, queue: JobQueue, v1: list, auth: tuple, job) -> None:
    """A job's progress as Server-Sent Events and its latest preview (runtime/service/events.py), behind the /v1
    token; ``job(id)`` its record, or 404."""
    events = queue.events

    @app.get("/v1/jobs/{job_id}/events", dependencies=v1, response_class=Response,
             summary="The job's progress as Server-Sent Events, ending with its final status",
             responses={200: {"description": "``progress`` events, then one ``status`` event",
                              "content": {"text/event-stream": {"schema": contract.SSE_EVENT}}},
                        **contract.errors(*auth, 404, 422)})
    async def job_events(request: Request, job_id: str,
                         last_event_id: str | None = Header(None, alias="Last-Event-ID", max_length=64)):
        record = await anyio.to_thread.run_sync(job, job_id)
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        if request.method == "HEAD":
            return Response(media_type="text/event-stream", headers=headers)
        return StreamingResponse(_stream(request, record["id"], events.parse(last_event_id)),
                                 media_type="text/event-stream", headers=headers)

    async def _stream(request: Request, job_id: str, last: int | None):
        checked = beat = time.monotonic()
        first = True
        while True:
            sent, ended = events.after(job_id, last)
            for seq, event in sent:
                last = seq
                yield events.frame(seq, "progress", event)
            now = time.monotonic()
            if first or ended or now - checked >= CHECK_S:
                first, checked = False, now
                record = await anyio.to_thread.run_sync(queue.store.get, job_id)
                if record is None or record["status"] in FINISHED:
                    for seq, event in events.after(job_id, last)[0]:  # what came between
                        yield events.frame(seq, "progress", event)
                    final = _view(record) if record is not None else {"id": job_id, "status": "deleted"}
                    yield events.frame(events.now(), "status", final)
                    return
            if now - beat >= HEARTBEAT_S:
                beat = now
                yield b": keep-alive\n\n"
            if await request.is_disconnected():
                return
            await anyio.sleep(POLL_S)

    @app.get("/v1/jobs/{job_id}/preview", dependencies=v1, response_class=Response,
             summary="The latest preview of the job's output as it forms",
             responses={200: {"description": "a JPEG", "content": {"image/jpeg": {"schema": {"type": "string"}}}},
                        **contract.errors(*auth, 404, 410, 422)})
    def preview(job_id: str):
        folder = queue.folder(job(job_id)["id"])
        try:
            image = (folder / PREVIEW).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            if not folder.is_dir():
                raise HTTPException(410, "the job's files are removed") from None
            raise HTTPException(404, "no preview yet") from None
        return Response(image, media_type="image/jpeg", headers={"Cache-Control": "no-store"})


def _operations(app: FastAPI, queue: JobQueue, metrics, backend: str) -> None:
    """The open routes: health, readiness, metrics, the page."""
    @app.get("/healthz", response_model=contract.Healthy, summary="The process is alive")
    def healthz():
        return {"status": "ok"}

    @app.get("/readyz", response_model=contract.Ready, summary="Engines loaded, a worker running, room to work",
             responses={503: {"model": contract.NotReady, "description": "not ready, and why"}})
    def readyz():
        problem = queue.problem()
        if problem is not None:
            return JSONResponse({"status": "not ready", "detail": problem}, status_code=503)
        return {"status": "ready", "backend": backend}

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics",
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
    def prometheus():
        return PlainTextResponse(metrics.render(), media_type=metrics.content_type)

    @app.get("/", response_class=HTMLResponse, summary="The web page")
    def page():
        return PAGE.read_text()


def _head_with_get(app: FastAPI) -> None:
    """HEAD wherever GET is (HTTP asks it of every resource), left out of the document: it is GET without the
    body. The document is made first, so that it lists the operations as written."""
    app.openapi()
    for route in app.router.routes:
        if isinstance(route, APIRoute) and route.methods and "GET" in route.methods:
            route.methods.add("HEAD")
