"""The HTTP side of the service: a FastAPI app over a JobQueue (runtime/service/jobs.py).

The paths and fields are the contract of DESIGN.md's "Service" line, declared in the OpenAPI document
(runtime/service/contract.py) with every status a route gives. The app never samples: it validates, stores
uploads under the data dir and answers from the job records; the queue's worker thread does the work.
Every refusal is one line, ``{"detail": ...}``; a method a path does not take is 405 with all those it does.
"""
from __future__ import annotations

import secrets
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from m3ddm.errors import InputError, first_line
from runtime.service import contract, upload
from runtime.service.disk import DiskFull
from runtime.service.docs import add_docs
from runtime.service.jobs import JobQueue, QueueClosed, QueueFull
from runtime.service.live import OpenedFile, add_live_routes
from runtime.service.metrics import Metrics

PAGE = Path(__file__).with_name("page.html")
MAX_OFFSET = 2**63 - 1  # SQLite's largest integer


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
        positions = queue.store.positions()
        return {"jobs": [contract.view(j, positions.get(j["id"])) for j in queue.store.list(limit, offset)],
                "limit": limit, "offset": offset}

    def _job(job_id: str) -> dict:
        job = queue.store.get(job_id) if len(job_id) < 64 else None
        if job is None:
            raise HTTPException(404, "no such job")
        return job

    @app.get("/v1/jobs/{job_id}", dependencies=v1, response_model=contract.Job, summary="A job",
             responses=contract.errors(*auth, 404, 422))
    def job(job_id: str):
        record = _job(job_id)
        position = queue.store.positions().get(record["id"]) if record["status"] == "queued" else None
        return contract.view(record, position)

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
        return OpenedFile(file, media_type="video/mp4", filename=f"{job_id}_{label}.mp4")

    @app.delete("/v1/jobs/{job_id}", dependencies=v1, response_model=contract.Deleted,
                summary="Delete a job with its files (a queued or running one is cancelled: within one step)",
                responses=contract.errors(*auth, 404, 422, 507))
    def delete(job_id: str):
        found = queue.delete(job_id) if len(job_id) < 64 else None
        if found is None:
            raise HTTPException(404, "no such job")
        return {**contract.view(found), "status": "deleted"}

    add_live_routes(app, queue, v1, auth, _job)


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
