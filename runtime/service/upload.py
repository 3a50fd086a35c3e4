"""An upload as it arrives: the multipart/form-data body of ``POST /v1/jobs`` read from the request stream, its
``file`` part written straight into DATA/uploads (never the system temp folder, never held whole, counted
against the size limit as it comes), every other part kept as a text field.

Refused with one line, and with whatever was written removed: over the limit (413), not multipart (415), a
malformed or cut-off form, a part without a name, a field or file given twice, text that is not UTF-8 (422),
a client that sends nothing for ``idle_s`` (408), a full disk (507).
"""
from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request

from m3ddm.errors import first_line
from runtime.service.disk import DiskFull, full, is_full

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks  # a TypedDict, defined for type checkers only

FIELDS_BYTES = 64 * 1024  # all text fields together; the options are a few dozen bytes


class Refused(Exception):
    """The request cannot be taken: ``status`` and one line."""

    def __init__(self, status: int, line: str):
        super().__init__(line)
        self.status = status


@dataclass
class Upload:
    path: Path | None = None  # the file part, under the uploads folder
    filename: str = ""
    fields: dict = field(default_factory=dict)


class _Form:
    """The parser's callbacks: headers of the part at hand, its text, and the file bytes still to be written."""

    def __init__(self):
        self.upload, self.pending, self.ended = Upload(), [], False
        self._name, self._value, self._headers, self._text = b"", b"", {}, None
        self._part: str | None = None
        self._text_bytes = 0
        self.has_file = False

    def callbacks(self) -> MultipartCallbacks:
        return {"on_part_begin": self._begin, "on_header_field": self._header_field,
                "on_header_value": self._header_value, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished, "on_part_data": self._data,
                "on_part_end": self._part_end, "on_end": self._end}

    def _begin(self):
        self._headers, self._part, self._text = {}, None, None

    def _header_field(self, data, start, end):
        self._name += data[start:end]

    def _header_value(self, data, start, end):
        self._value += data[start:end]

    def _header_end(self):
        self._headers[self._name.lower()] = self._value
        self._name, self._value = b"", b""

    def _headers_finished(self):
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = _text(options.get(b"name"), "a part's name")
        if not name:
            raise Refused(422, "a part of the form has no name (Content-Disposition: form-data; name=...)")
        if name == "file":
            if self.has_file:
                raise Refused(422, "the form has more than one file: send one video per job")
            self.has_file = True
            self.upload.filename = _text(options.get(b"filename", b""), "the file name")
        elif name in self.upload.fields:
            raise Refused(422, f"the field {name!r} is given twice")
        else:
            self._text = bytearray()
        self._part = name

    def _data(self, data, start, end):
        if self._text is None:
            self.pending.append(data[start:end])
            return
        self._text_bytes += end - start
        if self._text_bytes > FIELDS_BYTES:
            raise Refused(413, f"the form's text fields are over {FIELDS_BYTES // 1024} KB")
        self._text += data[start:end]

    def _part_end(self):
        if self._text is not None:
            self.upload.fields[self._part] = _text(bytes(self._text), f"the field {self._part!r}")

    def _end(self):
        self.ended = True


def _text(raw: bytes | None, what: str) -> str:
    try:
        return (raw or b"").decode("utf-8")
    except UnicodeDecodeError:
        raise Refused(422, f"{what} is not UTF-8 text") from None


async def receive(request: Request, folder: Path, limit: int, idle_s: float) -> Upload:
    """The form of ``request``, its file stored under ``folder``; raises Refused (nothing left behind)."""
    kind, params = parse_options_header(request.headers.get("content-type", ""))
    if kind != b"multipart/form-data":
        raise Refused(415, "the body must be multipart/form-data with a file field (and the options as fields)")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + FIELDS_BYTES:
        raise _too_large(limit)
    if not params.get(b"boundary"):
        raise Refused(422, "the multipart body has no boundary (Content-Type: multipart/form-data; boundary=...)")
    form = _Form()
    try:
        parser = MultipartParser(params[b"boundary"], form.callbacks())
    except (FormParserError, ValueError) as exc:
        raise Refused(422, f"not a multipart form: {first_line(exc)}") from None
    out: IO[bytes] | None = None
    try:
        received, chunks = 0, request.stream()
        while True:
            try:
                chunk = await asyncio.wait_for(anext(chunks), idle_s)
            except StopAsyncIteration:
                break
            except asyncio.TimeoutError:
                raise Refused(408, f"the upload sent nothing for {idle_s:g} s and was dropped") from None
            received += len(chunk)
            if received > limit + FIELDS_BYTES:  # the form's own fields fit in FIELDS_BYTES
                raise _too_large(limit)
            try:
                parser.write(chunk)
            except FormParserError as exc:
                raise Refused(422, f"not a well-formed multipart form: {first_line(exc)}") from None
            if form.pending:
                if out is None:
                    out = await run_in_threadpool(_create, folder)
                data, form.pending = b"".join(form.pending), []
                await run_in_threadpool(_write, out, data, folder)
        if not form.ended:
            raise Refused(422, "the form ended before its closing boundary (a cut-off upload?)")
        if not form.has_file:
            raise Refused(422, "the form has no file field")
        if out is None:  # an empty file is still a file (its job fails, saying so)
            out = await run_in_threadpool(_create, folder)
        out.close()
        form.upload.path = Path(out.name)
        return form.upload
    except BaseException as exc:
        if out is not None:
            _discard(out)
        if isinstance(exc, ClientDisconnect):
            raise Refused(400, "the client went away during the upload") from None
        if isinstance(exc, DiskFull):  # said again now that what it wrote is gone: the room there is
            raise full("the upload did not fit", folder) from None
        raise


def _too_large(limit: int) -> Refused:
    return Refused(413, f"the upload is over the limit of {limit / 2**20:g} MB")


def _create(folder: Path) -> IO[bytes]:
    try:
        return tempfile.NamedTemporaryFile(prefix="upload-", dir=folder, delete=False)  # noqa: SIM115
    except OSError as exc:
        if is_full(exc):
            raise full("the upload did not fit", folder) from exc
        raise


def _write(out, data: bytes, folder: Path) -> None:
    try:
        out.write(data)
        out.flush()
    except OSError as exc:
        if is_full(exc):
            raise full("the upload did not fit", folder) from exc
        raise


def _discard(out) -> None:
    try:
        out.close()
    except OSError:
        pass  # what it still held did not fit: it goes with the file
    Path(out.name).unlink(missing_ok=True)
