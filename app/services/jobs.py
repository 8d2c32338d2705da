"""Job commands: create (admitted, idempotently), cancel, retry, delete; and the
worker's pruning of a job's checkpoints. Admission is app.services.admission, reads
app.services.job_reads, the worker's inputs app.services.job_inputs."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import storage
from app.broker import route_for
from app.db.models import TERMINAL, IdempotencyKey, Job, JobStatus, new_id
from app.errors import Conflict, Invalid
from app.services import admission, lifecycle, quotas
from app.services.job_reads import get_job, latest_checkpoint
from app.services.lifecycle import AfterCommit
from app.settings import Settings
from kdcore.spec import JobSpec


@dataclass(frozen=True)
class Submission:
    """What create_job did: a new `job`, or the stored first response (`replay`) of an
    idempotent request seen before."""

    job: Job | None
    replay: dict[str, Any] | None
    request_hash: str


def create_job(
    session: Session,
    settings: Settings,
    *,
    tenant_id: str,
    spec: JobSpec,
    idempotency_key: str | None,
) -> Submission:
    """Insert a queued job (admitted, within the tenant's quotas). With an idempotency
    key seen before, nothing is inserted: the first response is replayed; the same key
    with another body is Invalid. The caller renders the job and, with a key, stores
    that response with `remember_response` in the same transaction."""
    data = spec.model_dump(mode="json")
    digest = _request_hash(data)
    if idempotency_key:
        replay = _replay(session, tenant_id, idempotency_key, digest)
        if replay is not None:
            return Submission(None, replay, digest)
    spec = admission.served(settings, spec)
    found = admission.check(session, settings, tenant_id=tenant_id, spec=spec)
    if found.problems:
        raise Invalid(found.problems)
    quotas.check_submission(session, settings, tenant_id, spec.priority)
    job = _insert_job(session, settings, tenant_id, spec.model_dump(mode="json"))
    return Submission(job, None, digest)


def remember_response(
    session: Session, tenant_id: str, key: str, submission: Submission, body: dict[str, Any]
) -> dict[str, Any] | None:
    """Store a created job's response under its idempotency key. If a concurrent request
    with the same key got there first, this one is rolled back and the winner's response
    returned (answer that instead)."""
    assert submission.job is not None
    session.add(
        IdempotencyKey(
            tenant_id=tenant_id,
            key=key,
            request_hash=submission.request_hash,
            job_id=submission.job.id,
            response=body,
        )
    )
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        replay = _replay(session, tenant_id, key, submission.request_hash)
        if replay is None:
            raise
        return replay
    return None


def _replay(session: Session, tenant_id: str, key: str, digest: str) -> dict[str, Any] | None:
    row = session.get(IdempotencyKey, (tenant_id, key))
    if row is None:
        return None
    if row.request_hash != digest:
        raise Invalid(
            [("/headers/Idempotency-Key", "reused with another body")],
            "this Idempotency-Key was used with a different request body",
        )
    return dict(row.response)


def _request_hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _insert_job(
    session: Session, settings: Settings, tenant_id: str, spec: dict[str, Any], **extra: Any
) -> Job:
    queue, priority = route_for(spec)
    job = Job(
        id=new_id("job"),
        tenant_id=tenant_id,
        name=spec["name"],
        kind=spec["kind"],
        status=JobStatus.QUEUED,
        spec=spec,
        max_attempts=settings.max_attempts,
        webhook_url=spec.get("webhook_url"),
        queue=queue,
        priority=priority,
        progress={},
        **extra,
    )
    session.add(job)
    session.flush()
    lifecycle.created(session, job)
    return job


def cancel_job(session: Session, *, tenant_id: str, job_id: str) -> tuple[Job, AfterCommit | None]:
    """Cancel (see lifecycle.cancel). Returns the job and what to run after commit."""
    job = get_job(session, tenant_id=tenant_id, job_id=job_id)
    if job.status in TERMINAL:
        raise Conflict(f"job {job_id} already ended ({job.status})")
    after = lifecycle.cancel(session, job)
    session.refresh(job)  # changed here, or under us: report the current state
    if after is None and job.status in TERMINAL:
        raise Conflict(f"job {job_id} already ended ({job.status})")
    return job, after


def retry_job(
    session: Session,
    settings: Settings,
    *,
    tenant_id: str,
    job_id: str,
    from_checkpoint: bool,
) -> Job:
    """A new job with the same spec (resumed from the old one's last checkpoint if
    asked), counted against the quotas like any submission."""
    old = get_job(session, tenant_id=tenant_id, job_id=job_id)
    if old.status not in TERMINAL:
        raise Conflict(f"job {job_id} has not ended; cancel it first")
    checkpoint_id = None
    if from_checkpoint:
        latest = latest_checkpoint(session, job_id)
        if latest is None:
            raise Conflict(f"job {job_id} has no checkpoint to resume from")
        checkpoint_id = latest.id
    quotas.check_submission(session, settings, tenant_id, int(old.spec.get("priority") or 0))
    return _insert_job(
        session, settings, tenant_id, old.spec, retry_of=old.id, resume_checkpoint_id=checkpoint_id
    )


def delete_job(session: Session, settings: Settings, *, tenant_id: str, job_id: str) -> None:
    job = get_job(session, tenant_id=tenant_id, job_id=job_id)
    if job.status not in TERMINAL:
        raise Conflict(f"job {job_id} is {job.status}; cancel it first")
    session.delete(job)
    storage.delete_prefix(settings, f"jobs/{job_id}")
