"""What the OpenAPI document says of the service, and what the service then holds to: the answers' shapes, each
status code a route gives with its body, the job form (the multipart body ``POST /v1/jobs`` reads itself, to
stream the file to disk under a size limit: runtime/service/upload.py) with every field's grammar
(runtime/options.py, checked by runtime/service/form.py). Schemathesis, run on this document against the real
server, keeps them in step (tests/test_service_contract.py)."""
from __future__ import annotations

from typing import Literal
from urllib.parse import quote

from pydantic import BaseModel, Field

from runtime.options import FIELDS
from runtime.service.store import STATUSES

Status = Literal[STATUSES]  # type: ignore[valid-type]


class Error(BaseModel):
    detail: str = Field(description="what went wrong, in one line")


class Created(BaseModel):
    id: str
    status: Literal["queued"]


class Progress(BaseModel):
    fraction: float = Field(ge=0, le=1)
    stage: str
    windows_done: int | None
    windows: int | None
    eta_s: float | None = Field(description="seconds left, estimated")


class Input(BaseModel):
    name: str | None = Field(description="the uploaded file's name, as the client gave it")
    bytes: int | None = Field(ge=0)
    duration_s: float | None = Field(ge=0, description="as the container declares it; none for an image")


class Job(BaseModel):
    id: str
    status: Status
    queue_position: int | None = Field(ge=1, description="1: the next to run; only while queued")
    input: Input
    progress: Progress
    error: str | None = Field(description="why it failed, in one line")
    outputs: dict[str, str] = Field(description="label (9x16, pad, ...) -> the URL of the result")
    created: float = Field(description="Unix time")
    started: float | None
    finished: float | None


class Deleted(Job):
    status: Literal["deleted"]


class Jobs(BaseModel):
    jobs: list[Job] = Field(description="newest first")
    limit: int
    offset: int


class Ready(BaseModel):
    status: Literal["ready"]
    backend: str


class NotReady(BaseModel):
    status: Literal["not ready"]
    detail: str


class Healthy(BaseModel):
    status: Literal["ok"]


# One Server-Sent Event of GET /v1/jobs/{id}/events: "progress" (the fields of --progress jsonl) or "status" (the
# job as GET /v1/jobs/{id} shows it), its data JSON, its id what Last-Event-ID resumes from.
SSE_EVENT = {"type": "object", "required": ["id", "event", "data"],
             "properties": {"id": {"type": "string"}, "event": {"type": "string", "enum": ["progress", "status"]},
                            "data": {"type": "string", "contentMediaType": "application/json"}}}

WHY = {400: "a malformed request (a client gone mid-upload)",
       401: "the bearer token is missing or wrong", 404: "no such job (or no such result or preview of it yet)",
       410: "the job's files are removed (it failed, or expired)",
       408: "the upload stalled", 413: "the upload is over --max-upload-mb", 415: "the body is not multipart/form-data",
       422: "a bad option, form or parameter",
       429: "more than --max-queue jobs are waiting", 503: "the service is shutting down",
       507: "the service's data disk is full"}


def view(job: dict, position: int | None = None) -> dict:
    """A job record as the API shows it; ``position`` its place in the queue when queued."""
    progress = job.get("progress") or {}
    outputs = job.get("outputs") or {}
    source = job.get("source") or {}
    return {"id": job["id"], "status": job["status"], "queue_position": position,
            "input": {key: source.get(key) for key in ("name", "bytes", "duration_s")},
            "progress": {"fraction": 1.0 if job["status"] == "succeeded" else progress.get("fraction", 0.0),
                         "stage": progress.get("stage", job["status"]),
                         "windows_done": progress.get("windows_done"), "windows": progress.get("windows"),
                         "eta_s": progress.get("eta_s")},
            "error": job.get("error"),
            "outputs": {label: f"/v1/jobs/{quote(job['id'], safe='')}/result/{quote(label, safe='')}"
                        for label in outputs},
            "created": job.get("created"), "started": job.get("started"), "finished": job.get("finished")}


def errors(*codes: int) -> dict:
    """FastAPI ``responses`` for these error codes, each with its one-line body."""
    return {code: {"model": Error, "description": WHY[code]} for code in codes}


def job_form() -> dict:
    """The request body of ``POST /v1/jobs`` (``openapi_extra``): the video and the options, all but the file
    optional; nothing else is taken."""
    properties = {"file": {"type": "string", "contentMediaType": "application/octet-stream",
                           "description": "the video (or image) to outpaint"}}
    properties |= {name: {**f.schema, "description": f.meaning} for name, f in FIELDS.items()}
    schema = {"type": "object", "properties": properties, "required": ["file"], "additionalProperties": False}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


def video(description: str) -> dict:
    return {"description": description,
            "content": {"video/mp4": {"schema": {"type": "string", "contentMediaType": "video/mp4"}}}}


def plain(description: str) -> dict:
    """An answer with a text body (Starlette's own, for a malformed or unsatisfiable Range header)."""
    return {"description": description, "content": {"text/plain": {"schema": {"type": "string"}}}}
