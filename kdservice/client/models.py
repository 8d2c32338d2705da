"""The API's resources as typed models. They mirror the server's OpenAPI document
(tests/client/test_models.py checks every field against it), and ignore fields a newer
server adds, so an old client keeps working."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

TERMINAL = ("succeeded", "failed", "cancelled")


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Transition(_Model):
    from_status: str | None
    to_status: str
    reason: str
    attempt: int
    at: str


class Progress(_Model):
    phase: str | None = None
    stage: str | None = None  # generating (step: answers of total_steps), then training
    model: str | None = None  # whose figures: student, or baseline (trained without a teacher)
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


class Job(_Model):
    id: str
    name: str
    kind: str
    status: str
    attempt: int
    max_attempts: int
    created_at: str
    started_at: str | None
    finished_at: str | None
    queue_position: int | None
    queue: str = "kd"
    priority: int = 0
    progress: Progress
    metrics: dict[str, float]  # the student's, never the baseline's
    baseline_metrics: dict[str, float] = Field(default_factory=dict)
    error: str | None
    status_transitions: list[Transition]
    retry_of: str | None
    resume_checkpoint_id: str | None
    spec: dict[str, Any]
    report: dict[str, Any] | None
    poll_after_s: float | None = None  # when to ask again; None once the job ended

    @property
    def done(self) -> bool:
        return self.status in TERMINAL


class JobPage(_Model):
    data: list[Job]
    has_more: bool
    next_after: str | None


class Event(_Model):
    seq: int
    type: str
    data: dict[str, Any]
    created_at: str | None = None  # not sent on the SSE stream

    @property
    def is_terminal(self) -> bool:
        return self.type == "status" and self.data.get("status") in TERMINAL


class EventPage(_Model):
    data: list[Event]
    has_more: bool
    next_after: int | None


class FileInfo(_Model):
    id: str
    filename: str
    purpose: str
    bytes: int
    sha256: str
    created_at: str


class CredentialInfo(_Model):
    """A stored credential: its name and when it was written (never its value)."""

    name: str
    created_at: str
    updated_at: str


class Artifact(_Model):
    id: str
    job_id: str
    name: str
    bytes: int
    sha256: str
    content_type: str
    download_url: str


class ValidationItem(_Model):
    loc: str
    msg: str


class Validation(_Model):
    valid: bool
    errors: list[ValidationItem]
    warnings: list[str]


# client model -> the server's OpenAPI component it mirrors
OPENAPI_COMPONENTS: dict[type[BaseModel], str] = {
    Transition: "Transition",
    Progress: "ProgressOut",
    Job: "JobOut",
    JobPage: "JobList",
    Event: "EventOut",
    EventPage: "EventList",
    FileInfo: "FileOut",
    Artifact: "ArtifactOut",
    ValidationItem: "ValidationItem",
    Validation: "ValidateOut",
}
