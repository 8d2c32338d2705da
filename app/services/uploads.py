"""Uploads in parts: a file too large for one request (a 20 GB dataset) is declared
first (name, purpose, size, sha256), sent as numbered parts in any order and any number
of requests, resumed by asking which parts arrived, then assembled, checked against its
sha256 and stored as an ordinary file (app.services.files: the same content checks).

Parts live under KD_DATA_DIR/uploads/<id>/ until the upload completes, is aborted or
expires (KD_UPLOAD_EXPIRE_S; the maintenance loop deletes it). An open upload counts
its declared size against the tenant's storage quota from the moment it is declared.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from app.db.models import File, Upload, UploadPart, new_id, utcnow
from app.db.repository import get_owned
from app.errors import Conflict, Invalid, LimitExceeded, NotFound, TooLarge
from app.services import files, quotas
from app.settings import Settings

MAX_PARTS = 10_000  # S3's own bound: a part size grows to fit a larger file
SHA256 = re.compile(r"^[0-9a-f]{64}$")


def create(
    session: Session,
    settings: Settings,
    tenant_id: str,
    filename: str,
    purpose: str,
    size: int,
    sha256: str,
) -> Upload:
    if size > settings.max_multipart_bytes:
        raise TooLarge(f"an upload in parts is limited to {settings.max_multipart_bytes} bytes")
    problems = []
    if purpose not in files.PURPOSES:
        problems.append(("/purpose", f"one of {list(files.PURPOSES)}"))
    if not SHA256.match(sha256):
        problems.append(("/sha256", "64 lowercase hex digits: the whole file's sha256"))
    if size < 1:
        problems.append(("/bytes", "at least 1"))
    name = Path(filename.replace("\\", "/")).name  # a name, never a path
    if not name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        problems.append(("/filename", "a file name without control characters"))
    if problems:
        raise Invalid(problems)
    open_now = session.scalar(
        select(func.count()).select_from(Upload).where(Upload.tenant_id == tenant_id)
    )
    if (open_now or 0) >= settings.max_open_uploads:
        raise LimitExceeded(
            f"{open_now} uploads are open (limit {settings.max_open_uploads}): complete or "
            "delete one first",
            retry_after_s=60,
        )
    quotas.check_storage(session, settings, tenant_id, size)
    part_bytes = max(settings.upload_part_bytes, math.ceil(size / MAX_PARTS))
    row = Upload(
        id=new_id("upl"),
        tenant_id=tenant_id,
        filename=name[:255],
        purpose=purpose,
        bytes=size,
        sha256=sha256,
        part_bytes=part_bytes,
        parts=math.ceil(size / part_bytes),
        expires_at=utcnow() + timedelta(seconds=settings.upload_expire_s),
    )
    session.add(row)
    session.flush()
    return row


def get(session: Session, tenant_id: str, upload_id: str) -> Upload:
    row = get_owned(session, Upload, tenant_id, upload_id)
    if row is None or row.expires_at < utcnow():
        raise NotFound("upload", upload_id)
    return row


def part_length(row: Upload, number: int) -> int:
    """The exact size part `number` (from 1) must have: the last one holds the rest."""
    if not 1 <= number <= row.parts:
        raise NotFound("part", f"{number} (this upload has parts 1 to {row.parts})")
    return min(row.part_bytes, row.bytes - (number - 1) * row.part_bytes)


def part_path(settings: Settings, row: Upload, number: int) -> Path:
    return settings.uploads_dir / row.id / f"{number:05d}"


def accepting_parts(row: Upload) -> None:
    """A part may not land while the upload is being assembled."""
    if row.completing_since is not None:
        raise Conflict("this upload is being completed: its parts can no longer change")


def record_part(session: Session, row: Upload, number: int, size: int, sha256: str) -> None:
    """A part's file is in place (renamed whole): record it, replacing an earlier one.
    The upload may have been completed or deleted while the part streamed in."""
    current = session.get(Upload, row.id, populate_existing=True)
    if current is None:
        raise NotFound("upload", row.id)
    accepting_parts(current)
    session.execute(
        delete(UploadPart).where(UploadPart.upload_id == row.id, UploadPart.number == number)
    )
    session.add(UploadPart(upload_id=row.id, number=number, bytes=size, sha256=sha256))


def received(session: Session, row: Upload) -> list[UploadPart]:
    stmt = select(UploadPart).where(UploadPart.upload_id == row.id).order_by(UploadPart.number)
    return list(session.scalars(stmt))


def describe(session: Session, row: Upload) -> dict[str, Any]:
    parts = received(session, row)
    have = {p.number for p in parts}
    return {
        "id": row.id,
        "filename": row.filename,
        "purpose": row.purpose,
        "bytes": row.bytes,
        "sha256": row.sha256,
        "part_bytes": row.part_bytes,
        "parts": row.parts,
        "received": [{"number": p.number, "bytes": p.bytes, "sha256": p.sha256} for p in parts],
        "missing": [n for n in range(1, row.parts + 1) if n not in have][:1000],
        "bytes_received": sum(p.bytes for p in parts),
        "created_at": row.created_at,
        "expires_at": row.expires_at,
    }


# a claim older than this is taken to be from a process that died while assembling
COMPLETION_CLAIM_S = 3600


def claim_completion(session: Session, row: Upload) -> None:
    """One `complete` at a time: a conditional UPDATE takes the upload (committed before
    any byte is assembled); a concurrent call finds it taken and gets a 409, no file."""
    now = utcnow()
    stale = now - timedelta(seconds=COMPLETION_CLAIM_S)
    claimed = session.execute(
        update(Upload)
        .where(
            Upload.id == row.id,
            or_(Upload.completing_since.is_(None), Upload.completing_since < stale),
        )
        .values(completing_since=now)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        raise Conflict("this upload is being completed by another request")


def release_completion(session: Session, row: Upload) -> None:
    """A completion that failed (parts missing, a sha256 mismatch) gives the upload back."""
    session.rollback()
    session.execute(
        update(Upload)
        .where(Upload.id == row.id)
        .values(completing_since=None)
        .execution_options(synchronize_session=False)
    )
    session.commit()


def complete(session: Session, settings: Settings, row: Upload) -> File:
    """Assemble the parts in order, check the whole file's sha256, store it as a file.
    On a mismatch the parts stay: the client compares each part's sha256 (GET) with its
    own and sends again those that differ."""
    have = {p.number for p in received(session, row)}
    missing = [n for n in range(1, row.parts + 1) if n not in have]
    if missing:
        raise Conflict(f"{len(missing)} parts have not arrived, e.g. {missing[:10]}")
    settings.files_dir.mkdir(parents=True, exist_ok=True)
    tmp = settings.files_dir / f".upload-{new_id('tmp')}"
    digest = hashlib.sha256()
    with open(tmp, "wb") as out:
        for number in range(1, row.parts + 1):
            with open(part_path(settings, row, number), "rb") as part:
                while chunk := part.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    if digest.hexdigest() != row.sha256:
        tmp.unlink(missing_ok=True)
        raise Invalid(
            [("/sha256", f"the parts assemble to sha256 {digest.hexdigest()}")],
            "the assembled file's sha256 is not the one declared: compare each part's "
            "sha256 (GET the upload) with yours and send again the parts that differ",
        )
    size = row.bytes
    # the upload's own size stops counting once the file does (same transaction)
    _forget(session, row)
    stored = files.store_upload(
        session, settings, row.tenant_id, row.filename, row.purpose, tmp, size, row.sha256
    )
    shutil.rmtree(settings.uploads_dir / row.id, ignore_errors=True)
    return stored


def _forget(session: Session, row: Upload) -> None:
    """The rows of an upload and of its parts (explicitly: SQLite may not cascade)."""
    session.execute(delete(UploadPart).where(UploadPart.upload_id == row.id))
    session.delete(row)
    session.flush()


def abort(session: Session, settings: Settings, row: Upload) -> None:
    if row.completing_since is not None:
        raise Conflict("this upload is being completed: delete the file it becomes instead")
    _forget(session, row)
    shutil.rmtree(settings.uploads_dir / row.id, ignore_errors=True)


def expire(session: Session, settings: Settings) -> list[str]:
    """Delete the uploads past their time (rows, then parts); returns their ids."""
    ids = list(session.scalars(select(Upload.id).where(Upload.expires_at < utcnow())))
    if ids:
        session.execute(delete(UploadPart).where(UploadPart.upload_id.in_(ids)))
        session.execute(delete(Upload).where(Upload.id.in_(ids)))
    for upload_id in ids:
        shutil.rmtree(settings.uploads_dir / upload_id, ignore_errors=True)
    return ids
