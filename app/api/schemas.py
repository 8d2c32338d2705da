"""Response models (requests use kdcore's JobSpec) and the functions that render rows."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from app.db import repository as repo
from app.db.models import Artifact, Checkpoint, File, Job, JobEvent


def iso(dt: datetime | None) -> str | None:
    return dt.isoformat(timespec="milliseconds") + "Z" if dt else None


class ProblemItem(BaseModel):
    loc: str
    msg: str


class Problem(BaseModel):
    """RFC 9457 problem details (served as application/problem+json)."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[ProblemItem] | None = None


def problem_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route can answer."""
    content = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    return {
        code: {"description": "problem details", "content": content, "model": Problem}
        for code in codes
    }


class Transition(BaseModel):
    from_status: str | None
    to_status: str
    reason: str
    attempt: int
    at: str


class ProgressOut(BaseModel):
    phase: str | None = None
    epoch: int | None = None
    epochs: int | None = None
    step: int | None = None
    total_steps: int | None = None
    fraction: float | None = None
    lr: float | None = None
    losses: dict[str, float] = Field(default_factory=dict)
    images_per_s: float | None = None
    eta_s: float | None = None


class JobOut(BaseModel):
    id: str
    name: str
    kind: str
    status: str
    attempt: int
    max_attempts: int
    created_at: str
    started_at: str | None
    finished_at: str | None
    queue_position: int | None = Field(description="1-based, among queued jobs of its queue")
    queue: str = Field(description="the worker pool: kd, or kd.<gpu_type>")
    priority: int
    progress: ProgressOut
    metrics: dict[str, float] = Field(description="latest validation metrics")
    error: str | None
    status_transitions: list[Transition]
    retry_of: str | None
    resume_checkpoint_id: str | None
    spec: dict[str, Any]
    report: dict[str, Any] | None


class JobList(BaseModel):
    data: list[JobOut]
    has_more: bool
    next_after: str | None


class ValidationItem(BaseModel):
    loc: str
    msg: str


class ValidateOut(BaseModel):
    valid: bool
    errors: list[ValidationItem]
    warnings: list[str]


class EventOut(BaseModel):
    seq: int
    type: str
    data: dict[str, Any]
    created_at: str


class EventList(BaseModel):
    data: list[EventOut]
    has_more: bool
    next_after: int | None


class MetricsOut(BaseModel):
    job_id: str
    points: list[dict[str, Any]]


class FileOut(BaseModel):
    id: str
    filename: str
    purpose: str
    bytes: int
    sha256: str
    created_at: str


class FileList(BaseModel):
    data: list[FileOut]
    has_more: bool
    next_after: str | None


class ArtifactOut(BaseModel):
    id: str
    job_id: str
    name: str
    bytes: int
    sha256: str
    content_type: str
    download_url: str


class CheckpointOut(BaseModel):
    id: str
    attempt: int
    epoch: int
    step: int
    bytes: int
    created_at: str


class ListOf(BaseModel):
    data: list[Any]


class TenantOut(BaseModel):
    id: str
    name: str
    webhook_secret: str = Field(description="HMAC-SHA256 key of this tenant's webhooks")


def job_out(session: Session, job: Job) -> JobOut:
    return job_outs(session, [job])[0]


def job_outs(session: Session, jobs: list[Job]) -> list[JobOut]:
    """Render jobs with their transitions and queue positions read in batches (a page
    of 50 costs three queries, not two per job)."""
    from app.services.jobs import transitions_of

    if not jobs:
        return []
    history = transitions_of(session, [j.id for j in jobs])
    positions = repo.queue_positions(session, jobs)
    return [_job_out(job, history.get(job.id, []), positions.get(job.id)) for job in jobs]


def _job_out(job: Job, history: list[Any], position: int | None) -> JobOut:
    p = job.progress or {}
    fraction = p["step"] / p["total_steps"] if p.get("total_steps") else None
    if job.status == "succeeded":
        fraction = 1.0
    stored = ("phase", "epoch", "epochs", "step", "total_steps", "lr", "images_per_s", "eta_s")
    progress = ProgressOut(
        **{k: p.get(k) for k in stored}, fraction=fraction, losses=p.get("losses") or {}
    )
    metrics = {k: v for k, v in (p.get("metrics") or {}).items() if isinstance(v, int | float)}
    return JobOut(
        id=job.id,
        name=job.name,
        kind=job.kind,
        status=job.status,
        attempt=job.attempt,
        max_attempts=job.max_attempts,
        created_at=iso(job.created_at) or "",
        started_at=iso(job.started_at),
        finished_at=iso(job.finished_at),
        queue_position=position,
        queue=job.queue,
        priority=job.priority,
        progress=progress,
        metrics=metrics,
        error=job.error,
        status_transitions=[
            Transition(
                from_status=t.from_status,
                to_status=t.to_status,
                reason=t.reason,
                attempt=t.attempt,
                at=iso(t.at) or "",
            )
            for t in history
        ],
        retry_of=job.retry_of,
        resume_checkpoint_id=job.resume_checkpoint_id,
        spec=job.spec,
        report=job.report,
    )


def render_job(session: Session, job: Job) -> dict[str, Any]:
    """The job as JSON, as stored for idempotent replays and returned by the routes."""
    return job_out(session, job).model_dump(mode="json")


def render_event(e: JobEvent) -> EventOut:
    return EventOut(seq=e.seq, type=e.type, data=e.data, created_at=iso(e.created_at) or "")


def render_file(f: File) -> FileOut:
    return FileOut(
        id=f.id,
        filename=f.filename,
        purpose=f.purpose,
        bytes=f.bytes,
        sha256=f.sha256,
        created_at=iso(f.created_at) or "",
    )


def render_artifact(a: Artifact) -> ArtifactOut:
    return ArtifactOut(
        id=a.id,
        job_id=a.job_id,
        name=a.name,
        bytes=a.bytes,
        sha256=a.sha256,
        content_type=a.content_type,
        download_url=f"/v1/artifacts/{a.id}/content",
    )


def render_checkpoint(c: Checkpoint) -> CheckpointOut:
    return CheckpointOut(
        id=c.id,
        attempt=c.attempt,
        epoch=c.epoch,
        step=c.step,
        bytes=c.bytes,
        created_at=iso(c.created_at) or "",
    )
