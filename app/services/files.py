"""Uploaded files: checked before they are accepted (weights must load without running
anything; archives must be safe and within their caps), stored, listed, deleted, and
resolved for the one purpose each was uploaded for. The HTTP upload itself (multipart,
size cap, sha256) is app.api.uploads."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import storage
from app.db.models import ACTIVE, Artifact, File, Job, new_id
from app.db.repository import get_owned, page_newest_first
from app.errors import Conflict, Invalid, NotFound
from app.services import quotas
from app.settings import Settings
from kdcore.spec import model_entries

PURPOSES = ("checkpoint", "dataset", "teacher_outputs")


def check_content(path: Path, filename: str, purpose: str, settings: Settings) -> None:
    """Refuse files kdcore could not use safely, with the reason (kdcore.checks.input_files)."""
    from kdcore.checks.input_files import check_input_file
    from kdcore.errors import KDError

    try:
        check_input_file(path, filename, purpose, settings.max_archive_unpacked_bytes)
    except KDError as exc:
        message = str(exc).replace(path.name, filename)  # never show our temp file's name
        raise Invalid([("/file", message)], message) from None


def store_upload(
    session: Session,
    settings: Settings,
    tenant_id: str,
    filename: str,
    purpose: str,
    tmp: Path,
    size: int,
    sha256: str,
) -> File:
    try:
        quotas.check_storage(session, settings, tenant_id, size)
        check_content(tmp, filename, purpose, settings)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    file_id = new_id("file")
    # no part of the client's name reaches the storage key
    location = storage.put(settings, tmp, f"files/{file_id}", move=True)
    row = File(
        id=file_id,
        tenant_id=tenant_id,
        filename=filename,
        purpose=purpose,
        bytes=size,
        sha256=sha256,
        path=location,
    )
    session.add(row)
    return row


def get_file(session: Session, tenant_id: str, file_id: str) -> File:
    row = get_owned(session, File, tenant_id, file_id)
    if row is None:
        raise NotFound("file", file_id)
    return row


def list_files(
    session: Session,
    tenant_id: str,
    limit: int,
    after: str | None,
    purpose: str | None = None,
    sha256: str | None = None,
) -> tuple[list[File], bool]:
    """A page of the tenant's files, newest first; `sha256` finds the copies of one
    file's content (a client uploads a file once: `kd submit`)."""
    cursor = get_file(session, tenant_id, after) if after else None
    stmt = select(File).where(File.tenant_id == tenant_id)
    if purpose is not None:
        stmt = stmt.where(File.purpose == purpose)
    if sha256 is not None:
        stmt = stmt.where(File.sha256 == sha256)
    return page_newest_first(session, stmt, File, cursor, limit)


def delete_file(session: Session, settings: Settings, tenant_id: str, file_id: str) -> None:
    row = get_file(session, tenant_id, file_id)
    active = session.execute(
        select(Job.id, Job.spec).where(Job.tenant_id == tenant_id, Job.status.in_(ACTIVE))
    )
    for job_id, spec in active:
        if file_id in _references(spec):
            raise Conflict(f"file {file_id} is used by active job {job_id}")
    storage.delete(settings, row.path)
    session.delete(row)


def _references(spec: dict) -> set[str]:
    refs = {model.get("checkpoint") for _, model in model_entries(spec)}
    refs.add((spec.get("teacher") or {}).get("outputs"))
    refs.add((spec.get("dataset") or {}).get("path"))
    return {r for r in refs if r}


# a job's artifacts that serve as another job's inputs, by the end of their names: weights,
# graphs and model folders as checkpoints (a teacher, a student's start), the teacher's
# generations as a text set
ARTIFACT_INPUTS = {
    "checkpoint": (".safetensors", ".onnx", "_hf.zip", "_sentence_transformer.zip"),
    "dataset": (".jsonl", ".txt"),
    "teacher_outputs": ("teacher_outputs.zip",),
}


def resolve_reference(session: Session, tenant_id: str, ref: str, purpose: str) -> str | None:
    """The storage location behind a file or artifact id of this tenant usable for
    `purpose` (a path, or an s3:// URL: see app.storage); None if there is none.

    A file is used only for the purpose it was uploaded and checked for: a dataset
    upload never becomes a checkpoint. An artifact serves where its kind fits
    (ARTIFACT_INPUTS)."""
    if ref.startswith("file_"):
        row = get_owned(session, File, tenant_id, ref)
        return str(row.path) if row is not None and row.purpose == purpose else None
    if ref.startswith("art_"):
        art = get_owned(session, Artifact, tenant_id, ref)
        fits = art is not None and art.name.endswith(ARTIFACT_INPUTS.get(purpose, ()))
        return str(art.path) if art is not None and fits else None
    return None


def describe_reference(session: Session, tenant_id: str, ref: str, purpose: str) -> str:
    """Why `ref` cannot serve as `purpose` (for the 422 message)."""
    if ref.startswith("file_"):
        row = get_owned(session, File, tenant_id, ref)
        if row is not None and row.purpose != purpose:
            return (
                f"file {ref!r} was uploaded with purpose {row.purpose!r}; "
                f"upload it again with purpose {purpose!r}"
            )
    kinds = " or ".join(f"*{end}" for end in ARTIFACT_INPUTS.get(purpose, ()))
    if ref.startswith("art_"):
        art = get_owned(session, Artifact, tenant_id, ref)
        if art is not None:
            return (
                f"artifact {ref!r} ({art.name}) cannot be used as a {purpose}: a {purpose} "
                f"is a job's {kinds} artifact, or a file uploaded with purpose {purpose!r}"
            )
    return (
        f"no file or artifact {ref!r}: upload one (`kd files upload PATH --purpose "
        f"{purpose}`, POST /v1/files) and give its file_... id, or give a job's {kinds} "
        "artifact id (GET /v1/jobs/{id}/artifacts)"
    )
