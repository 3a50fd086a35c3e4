"""The routes of a job's media, behind the /v1 token: its progress as Server-Sent Events, its latest preview
(runtime/service/events.py), its input as uploaded; and OpenedFile, which every file answer is sent with."""
from __future__ import annotations

import mimetypes
import os
import time
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.responses import FileResponse, Response, StreamingResponse

from runtime.service import contract
from runtime.service.events import CHECK_S, HEARTBEAT_S, POLL_S, PREVIEW
from runtime.service.jobs import JobQueue
from runtime.service.store import FINISHED


class OpenedFile(FileResponse):
    """A file (a result, an input) sent from the file opened before the answer starts: a DELETE meanwhile removes
    its name, not what is being sent."""

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


def add_live_routes(app: FastAPI, queue: JobQueue, v1: list, auth: tuple, job) -> None:
    """A job's progress as Server-Sent Events, its latest preview (runtime/service/events.py) and its input, behind
    the /v1 token; ``job(id)`` its record, or 404."""
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
                    final = contract.view(record) if record is not None else {"id": job_id, "status": "deleted"}
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

    @app.get("/v1/jobs/{job_id}/source", dependencies=v1, response_class=Response,
             summary="The job's input as uploaded (range requests: a page shows it beside the result)",
             responses={200: {"description": "the uploaded file, its type from its name",
                              "content": {"application/octet-stream": {"schema": {"type": "string"}}}},
                        206: {"description": "the range asked for"},
                        400: contract.plain("a malformed Range header"), 416: contract.plain("a range past the end"),
                        **contract.errors(*auth, 404, 410, 422)})
    def source(job_id: str):
        record = job(job_id)
        try:
            file = open(queue.folder(record["id"]) / record["input"], "rb")  # noqa: SIM115 (closed by the response)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise HTTPException(410, "the job's files are removed") from None
        kind = mimetypes.guess_type(record["input"])[0] or "application/octet-stream"
        return OpenedFile(file, media_type=kind, headers={"X-Content-Type-Options": "nosniff"})
