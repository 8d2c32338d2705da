"""Receiving an upload: a multipart body (`file` + `purpose`) streamed to a temp file
under the data folder, with the size cap enforced while it streams and its sha256
computed on the way. What happens to the file next is app.services.files."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncGenerator
from pathlib import Path

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from app.db.models import new_id
from app.errors import ProblemError
from app.services.files import PURPOSES
from app.settings import Settings


def _too_large(limit: int) -> ProblemError:
    return ProblemError(413, "Content Too Large", f"uploads are limited to {limit} bytes")


async def _capped(request: Request, limit: int) -> AsyncGenerator[bytes, None]:
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > limit:
            raise _too_large(limit)
        yield chunk


async def receive_upload(request: Request, settings: Settings) -> tuple[str, str, Path, int, str]:
    """Parse a multipart upload (`file` + `purpose`) into a temp file under the data dir.
    Returns (filename, purpose, temp path, size, sha256)."""
    limit = settings.max_upload_bytes + 64 * 1024  # room for the multipart framing
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _too_large(settings.max_upload_bytes)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ProblemError(
            415,
            "Unsupported Media Type",
            "upload with multipart/form-data: a 'file' part and a 'purpose' field",
        )
    parser = MultiPartParser(request.headers, _capped(request, limit), max_files=1, max_fields=4)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise ProblemError(400, "Bad Request", f"malformed multipart body: {exc.message}") from None
    upload, purpose = form.get("file"), form.get("purpose", "checkpoint")
    try:
        if not isinstance(upload, UploadFile):
            raise ProblemError(
                422,
                "Unprocessable Content",
                "missing the 'file' part",
                errors=[{"loc": "/file", "msg": "field required"}],
            )
        if purpose not in PURPOSES:
            raise ProblemError(
                422,
                "Unprocessable Content",
                f"purpose must be one of {PURPOSES}",
                errors=[{"loc": "/purpose", "msg": f"one of {list(PURPOSES)}"}],
            )
        settings.files_dir.mkdir(parents=True, exist_ok=True)
        tmp = settings.files_dir / f".upload-{new_id('tmp')}"
        digest, size = hashlib.sha256(), 0
        with open(tmp, "wb") as out:
            while chunk := await upload.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if size > settings.max_upload_bytes:
            tmp.unlink(missing_ok=True)
            raise _too_large(settings.max_upload_bytes)
        filename = Path(upload.filename or "upload").name[:255] or "upload"
        return filename, str(purpose), tmp, size, digest.hexdigest()
    finally:
        await form.close()


async def receive_part(request: Request, dest: Path, expected: int) -> tuple[int, str]:
    """Stream one part's raw body (application/octet-stream) to `dest`, whole or not at
    all (a temp name, renamed once complete); it must be exactly `expected` bytes.
    Returns (size, sha256)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) != expected):
        if declared.isdigit() and int(declared) > expected:
            raise _too_large(expected)
        raise ProblemError(
            422,
            "Unprocessable Content",
            f"this part is {expected} bytes; Content-Length says {declared}",
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{new_id('tmp')}")
    digest, size = hashlib.sha256(), 0
    try:
        with open(tmp, "wb") as out:
            async for chunk in _capped(request, expected):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if size != expected:
            raise ProblemError(
                422, "Unprocessable Content", f"this part is {expected} bytes; {size} arrived"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return size, digest.hexdigest()
