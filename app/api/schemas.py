"""Response models (requests use kdcore's JobSpec). They are built from the database
rows' attributes (`model_validate(row)`); a job from the view the service assembles
(the row, its transitions, its queue position). No query happens here."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, model_validator

from app.db.models import JobStatus
from app.services.job_reads import JobView


def iso(dt: datetime | None) -> str | None:
    """Timestamps are naive UTC in the database; JSON gets ISO 8601 with a Z."""
    return dt.isoformat(timespec="milliseconds") + "Z" if dt else None


def _timestamp(value: Any) -> Any:
    return iso(value) if isinstance(value, datetime) else value


Timestamp = Annotated[str, BeforeValidator(_timestamp)]
MaybeTimestamp = Annotated[str | None, BeforeValidator(_timestamp)]


class FromRow(BaseModel):
    model_config = ConfigDict(from_attributes=True)


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


class Transition(FromRow):
    from_status: str | None
    to_status: str
    reason: str
    attempt: int
    at: Timestamp


class ProgressOut(BaseModel):
    model_config = ConfigDict(extra="ignore")

    phase: str | None = None
    stage: str | None = Field(
        default=None,
        description="generating (a teacher endpoint or model answers the prompts of a "
        "sequence-level job: step counts answers of total_steps), then training",
    )
    model: str | None = Field(
        default=None,
        description="whose figures these are: student, or baseline (the same student "
        "trained without a teacher, spec baseline: true)",
    )
    epoch: int | None = None
    epochs: int | None = None
    step: int | None = None
    total_steps: int | None = None
    fraction: float | None = None
    lr: float | None = None
    losses: dict[str, float] = Field(default_factory=dict)
    images_per_s: float | None = None
    tokens_per_s: float | None = None  # text jobs
    eta_s: float | None = None
    trial: dict[str, Any] | None = None  # a sweep's: index, of, rung, params


# how long a poller may wait before asking again, by status (none once the job ended)
POLL_AFTER_S: dict[str, float] = {
    JobStatus.QUEUED: 5.0,
    JobStatus.RUNNING: 2.0,
    JobStatus.CANCELLING: 2.0,
}


class JobOut(FromRow):
    id: str
    name: str
    kind: str
    status: str
    attempt: int
    max_attempts: int
    created_at: Timestamp
    started_at: MaybeTimestamp
    finished_at: MaybeTimestamp
    queue_position: int | None = Field(description="1-based, among queued jobs of its queue")
    queue: str = Field(description="the worker pool: kd, or kd.<gpu_type>")
    priority: int
    progress: ProgressOut
    metrics: dict[str, float] = Field(
        description="the student's latest validation metrics (never the baseline's)"
    )
    baseline_metrics: dict[str, float] = Field(
        default_factory=dict,
        description="with baseline: true, the baseline's latest validation metrics",
    )
    error: str | None
    status_transitions: list[Transition]
    retry_of: str | None
    resume_checkpoint_id: str | None
    spec: dict[str, Any]
    report: dict[str, Any] | None
    poll_after_s: float | None = Field(
        default=None,
        description="when a poller should ask again (a queued job waits for a worker, a "
        "running one stores progress every heartbeat); null once the job has ended",
    )

    @classmethod
    def from_view(cls, view: JobView) -> JobOut:
        """The row's attributes, plus what is derived: progress (with its fraction),
        numeric metrics, the transitions and the queue position."""
        job, stored = view.job, view.job.progress or {}
        fraction = 1.0 if job.status == JobStatus.SUCCEEDED else _fraction(stored, job.spec)
        progress = ProgressOut.model_validate({**stored, "fraction": fraction})
        derived = {
            "queue_position": view.queue_position,
            "progress": progress,
            "metrics": _numbers(stored.get("metrics")),
            "baseline_metrics": _numbers(stored.get("baseline_metrics")),
            "status_transitions": [Transition.model_validate(t) for t in view.transitions],
            "poll_after_s": POLL_AFTER_S.get(job.status),
        }
        row = {name: getattr(job, name) for name in cls.model_fields if name not in derived}
        return cls.model_validate({**row, **derived})


def _numbers(figures: Any) -> dict[str, float]:
    return {k: v for k, v in (figures or {}).items() if isinstance(v, int | float)}


def _fraction(stored: dict[str, Any], spec: dict[str, Any]) -> float | None:
    """How far the whole job is: a job with baseline: true trains its student, then the
    baseline for the same budget, so each phase is half of it."""
    if not stored.get("total_steps") or stored.get("stage") == "generating":
        return None  # answers of the teacher, not steps of the job
    fraction = stored["step"] / stored["total_steps"]
    if not (spec.get("baseline") and spec.get("kind") == "distill"):
        return fraction
    return 0.5 + fraction / 2 if stored.get("phase") == "baseline" else fraction / 2


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


class EventOut(FromRow):
    seq: int
    type: str
    data: dict[str, Any]
    created_at: Timestamp


class EventList(BaseModel):
    data: list[EventOut]
    has_more: bool
    next_after: int | None


class MetricsOut(BaseModel):
    job_id: str
    points: list[dict[str, Any]]


class FileOut(FromRow):
    id: str
    filename: str
    purpose: str
    bytes: int
    sha256: str
    created_at: Timestamp


class CredentialIn(BaseModel):
    """A secret for a teacher endpoint (its API key). Write-only: no response, event,
    log or report ever contains it."""

    model_config = ConfigDict(extra="forbid")

    value: SecretStr = Field(
        description="the secret: one line of printable ASCII, at most 4096 bytes",
        json_schema_extra={"writeOnly": True},
    )


class CredentialOut(FromRow):
    """What is known of a stored credential: its name and when it was written."""

    name: str
    created_at: Timestamp
    updated_at: Timestamp


class CredentialList(BaseModel):
    data: list[CredentialOut]


class UploadCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filename: str = Field(min_length=1, max_length=255)
    purpose: str = Field(default="checkpoint", max_length=20)
    bytes: int = Field(ge=1, description="the whole file's size")
    sha256: str = Field(min_length=64, max_length=64, description="the whole file's, hex")


class PartOut(BaseModel):
    number: int
    bytes: int
    sha256: str


class UploadOut(BaseModel):
    id: str
    filename: str
    purpose: str
    bytes: int
    sha256: str
    part_bytes: int
    parts: int
    received: list[PartOut]
    missing: list[int] = Field(description="the first 1,000 parts not yet received")
    bytes_received: int
    created_at: Timestamp
    expires_at: Timestamp


class FileList(BaseModel):
    data: list[FileOut]
    has_more: bool
    next_after: str | None


class ArtifactOut(FromRow):
    id: str
    job_id: str
    name: str
    bytes: int
    sha256: str
    content_type: str
    download_url: str

    @model_validator(mode="before")
    @classmethod
    def _url(cls, row: Any) -> Any:
        if isinstance(row, dict):
            return row
        fields = {n: getattr(row, n) for n in cls.model_fields if n != "download_url"}
        return {**fields, "download_url": f"/v1/artifacts/{row.id}/content"}


class TenantArtifactOut(ArtifactOut):
    """An artifact with the job that made it: what the dashboard offers as a teacher."""

    job_name: str
    job_kind: str
    arch: str | None = Field(description="the architecture of the job's student")


class CheckpointOut(FromRow):
    id: str
    attempt: int
    epoch: int
    step: int
    bytes: int
    created_at: Timestamp


class TenantOut(BaseModel):
    id: str
    name: str
    webhook_secret: str = Field(description="HMAC-SHA256 key of this tenant's webhooks")


def render_job(view: JobView) -> dict[str, Any]:
    """The job as JSON, as stored for idempotent replays and returned by the routes."""
    return JobOut.from_view(view).model_dump(mode="json")
