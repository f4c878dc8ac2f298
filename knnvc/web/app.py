"""The HTTP side: ``POST /api/convert`` (multipart in, ``audio/wav`` out), ``GET /api/voices``, ``GET /api/health``,
and the Gradio page mounted at ``/``.

The target is reference files (``reference``), a saved voice (``voice``) or a pair (``pair``: a saved pair's name,
or a ``.pair`` file), and the controls are ``ConvertOptions``' fields, the method among them.

Bad input gets a 4xx with ``{"error": "<one line>"}``: 400 a usage error (a missing field, a bad control value),
413 an upload over a limit, 422 audio, a voice or a pair that cannot be used, or a method that does not fit the
target (LinearVC without a pair, MKL-VC from under 1 s of speech), 503 too many requests waiting. The server keeps
serving after any of them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from knnvc.batch.plan import safe_name
from knnvc.errors import AudioError, KnnvcError, UsageError, VoiceError
from knnvc.web.controls import options_from_form
from knnvc.web.queue import BusyError
from knnvc.web.service import Service, Target, TooLargeError, UnfitTargetError, Uploads

if TYPE_CHECKING:
    from starlette.datastructures import FormData

log = logging.getLogger(__name__)

FILE_FIELDS = ("source", "reference")  # always files
PAIR_FIELD = "pair"  # a saved pair's name, or a .pair file
MULTIPART_SLACK = 1 << 16  # bytes of multipart headers and boundaries allowed on top of the upload limit
MAX_FORM_FILES = 64  # files in one API request (one source and the references)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyLimit:
    """ASGI middleware: a POST whose Content-Length is over the limit gets 413 before its body is read."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("method") == "POST":
            length = dict(scope.get("headers") or []).get(b"content-length", b"0")
            if length.isdigit() and int(length) > self.limit + MULTIPART_SLACK:
                mb = self.limit / 1e6
                message = f"upload of {int(length) / 1e6:.1f} MB is over this server's limit of {mb:g} MB"
                await JSONResponse({"error": message}, status_code=413)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(service: Service, *, page: bool = True) -> FastAPI:
    """The FastAPI application: the API routes and, with ``page``, the Gradio page at ``/``."""
    app = FastAPI(title="knnvc", docs_url="/api/docs", redoc_url=None, openapi_url="/api/openapi.json")
    app.add_middleware(BodyLimit, limit=service.limits.max_upload_bytes)

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        voices, pairs = len(service.voice_names()), len(service.pair_names())
        return {"status": "ok", "waiting": service.queue.waiting, "voices": voices, "pairs": pairs}

    @app.get("/api/voices")
    def voices() -> dict[str, list[str]]:
        return {"voices": service.voice_names(), "pairs": service.pair_names()}

    @app.post("/api/convert", response_model=None)
    async def convert(request: Request) -> Response:
        with service.uploads() as uploads:
            try:
                async with request.form(max_files=MAX_FORM_FILES) as form:
                    read = await _read_form(form, uploads, service.limits.max_upload_bytes)
                source, references, pair_file, fields = read
                voice = fields.pop("voice", "").strip() or None
                pair = fields.pop(PAIR_FIELD, "").strip() or None
                if pair and pair_file:
                    raise UsageError("'pair' was given twice: a saved pair's name or a .pair file, not both")
                options = options_from_form(fields, service.voice)
                target = Target(voice, references, options, pair=pair, pair_file=pair_file)
                wav, rate = await run_in_threadpool(service.convert, uploads, source, target)
                path = await run_in_threadpool(service.save, wav, rate, uploads.folder / "result.wav")
                onto = voice or pair or (Path(uploads.shown(pair_file)).stem if pair_file else "converted")
                name = f"{safe_name(Path(uploads.shown(source)).stem)}_{safe_name(onto)}.wav"
                headers = {"Content-Disposition": f'attachment; filename="{name}"', "X-Sample-Rate": str(rate)}
                return Response(path.read_bytes(), media_type="audio/wav", headers=headers)
            except Exception as exc:  # the boundary: every failure becomes one JSON line
                return JSONResponse({"error": _one_line(exc, uploads)}, status_code=_status(exc))

    if not page:
        return app
    import gradio as gr

    from knnvc.web.page import build_page

    os.environ["GRADIO_TEMP_DIR"] = str(service.workspace / "gradio")  # uploads land in the server's workspace
    blocks = build_page(service)
    return gr.mount_gradio_app(app, blocks, path="", max_file_size=service.limits.max_upload_bytes, show_error=False)


def _status(exc: Exception) -> int:
    """The HTTP status for an error raised while serving a request."""
    if isinstance(exc, HTTPException):  # the multipart parser's own refusals (too many files, a broken body)
        return exc.status_code
    if isinstance(exc, TooLargeError):
        return 413
    if isinstance(exc, BusyError):
        return 503
    if isinstance(exc, UnfitTargetError):  # the request is well formed; its target cannot be used so
        return 422
    if isinstance(exc, UsageError):
        return 400
    if isinstance(exc, (AudioError, VoiceError)):
        return 422
    return 500


def _one_line(exc: Exception, uploads: Uploads) -> str:
    """The message the client sees; anything unexpected is logged with its traceback and named only."""
    if isinstance(exc, HTTPException):
        return " ".join(str(exc.detail).split())
    if not isinstance(exc, KnnvcError):
        log.exception("unexpected error in /api/convert")
        return f"internal error ({type(exc).__name__}); the server log has the details"
    return uploads.message(exc)


async def _read_form(
    form: FormData, uploads: Uploads, limit: int
) -> tuple[Path, list[Path], Path | None, dict[str, str]]:
    """Save the uploads into this request's folder; returns (source, references, an uploaded pair, the text
    fields)."""
    source: Path | None = None
    pair: Path | None = None
    references: list[Path] = []
    fields: dict[str, str] = {}
    total = 0
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            if key not in (*FILE_FIELDS, PAIR_FIELD):
                raise UsageError(f"field {key!r} takes a value, not a file; files go in 'source', 'reference' and "
                                 "'pair'")  # fmt: skip
            if (key == "source" and source is not None) or (key == PAIR_FIELD and pair is not None):
                raise UsageError(f"send one {key!r} file per request")
            path = uploads.place(value.filename or key, key)
            total += await _save(value, path)
            if total > limit:
                raise TooLargeError(f"the uploads are over this server's limit of {limit / 1e6:g} MB")
            if key == "source":
                source = path
            elif key == PAIR_FIELD:
                pair = path
            else:
                references.append(path)
        else:
            if key in FILE_FIELDS:
                raise UsageError(f"{key!r} must be a file upload (curl: -F '{key}=@speech.wav')")
            if key in fields:
                raise UsageError(f"field {key!r} was given twice")
            fields[key] = value
    if source is None:
        raise UsageError("no 'source' file: send the speech to convert (curl: -F 'source=@speech.wav')")
    return source, references, pair, fields


async def _save(upload: UploadFile, path: Path) -> int:
    """Copy an upload into ``path``; returns its size in bytes."""
    size = 0
    with open(path, "wb") as out:
        while block := await upload.read(1 << 20):
            out.write(block)
            size += len(block)
    return size
