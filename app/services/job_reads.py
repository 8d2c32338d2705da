"""Reading jobs: one job, a page of jobs (ids and versions first, for the render
cache), their transitions, queue positions, events, metrics, checkpoints, artifacts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select
from sqlalchemy.orm import Session

from app import storage
from app.db import repository as repo
from app.db.models import Artifact, Checkpoint, Job, JobEvent, JobTransition
from app.errors import NotFound
from app.settings import Settings


def get_job(session: Session, *, tenant_id: str, job_id: str) -> Job:
    job = repo.get_owned(session, Job, tenant_id, job_id)
    if job is None:
        raise NotFound("job", job_id)
    return job


@dataclass(frozen=True)
class JobQuery:
    """A page of the job list: at most `limit` jobs after the job `after` (newest
    first), of one `status` and with `name` in their name, when given."""

    limit: int = 50
    after: str | None = None
    status: str | None = None
    name: str | None = None


def list_job_versions(
    conn: Connection, tenant_id: str, query: JobQuery
) -> tuple[list[tuple[str, int]], bool]:
    """The page as (id, version) only, in Core on a plain connection (no ORM session, no
    row objects): what decides whether a cached rendering of each job is still right,
    without loading specs and reports."""
    stmt = select(Job.id, Job.version).where(Job.tenant_id == tenant_id)
    cursor = select(Job.created_at).where(Job.id == query.after, Job.tenant_id == tenant_id)
    if query.after:  # the cursor job's time in the same query: one round trip a page
        at = cursor.scalar_subquery()
        stmt = stmt.where((Job.created_at < at) | ((Job.created_at == at) & (Job.id < query.after)))
    if query.status:
        stmt = stmt.where(Job.status == query.status)
    if query.name:
        # the name is matched literally: % and _ are not wildcards here
        literal = query.name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        stmt = stmt.where(Job.name.ilike(f"%{literal}%", escape="\\"))
    stmt = stmt.order_by(Job.created_at.desc(), Job.id.desc()).limit(query.limit + 1)
    rows = [(str(i), int(v)) for i, v in conn.execute(stmt)]
    if not rows and query.after and conn.execute(cursor).first() is None:
        raise NotFound("job", query.after)  # an unknown cursor, not an empty page
    return rows[: query.limit], len(rows) > query.limit


def jobs_by_id(session: Session, tenant_id: str, job_ids: list[str]) -> list[Job]:
    """The tenant's jobs of `job_ids`, in that order (missing ones left out)."""
    if not job_ids:
        return []
    found = {
        job.id: job
        for job in session.scalars(
            select(Job).where(Job.tenant_id == tenant_id, Job.id.in_(job_ids))
        )
    }
    return [found[i] for i in job_ids if i in found]


def job_version(session: Session, tenant_id: str, job_id: str) -> int | None:
    """The version of the tenant's job, None if there is no such job: one indexed row."""
    version = session.scalar(
        select(Job.version).where(Job.id == job_id, Job.tenant_id == tenant_id)
    )
    return None if version is None else int(version)


def transitions_of(session: Session, job_ids: list[str]) -> dict[str, list[JobTransition]]:
    """The transitions of several jobs in one query, each job's in order."""
    stmt = (
        select(JobTransition)
        .where(JobTransition.job_id.in_(job_ids))
        .order_by(JobTransition.job_id, JobTransition.id)
    )
    out: dict[str, list[JobTransition]] = {}
    for t in session.scalars(stmt):
        out.setdefault(t.job_id, []).append(t)
    return out


@dataclass(frozen=True)
class JobView:
    """A job as the API shows it: the row, its transitions, its place in the queue."""

    job: Job
    transitions: list[JobTransition]
    queue_position: int | None


def job_views(session: Session, jobs: list[Job]) -> list[JobView]:
    """Views of several jobs in three queries (rows given, transitions, positions), not
    two per job."""
    if not jobs:
        return []
    history = transitions_of(session, [j.id for j in jobs])
    positions = repo.queue_positions(session, jobs)
    return [JobView(j, history.get(j.id, []), positions.get(j.id)) for j in jobs]


def job_view(session: Session, job: Job) -> JobView:
    return job_views(session, [job])[0]


def queue_position(session: Session, job: Job) -> int | None:
    """The job's 1-based place in its queue while it is queued (one indexed count)."""
    return repo.queue_positions(session, [job]).get(job.id)


def latest_checkpoint(session: Session, job_id: str) -> Checkpoint | None:
    stmt = (
        select(Checkpoint)
        .where(Checkpoint.job_id == job_id)
        .order_by(Checkpoint.step.desc(), Checkpoint.created_at.desc())
        .limit(1)
    )
    return session.scalar(stmt)


def list_checkpoints(session: Session, job_id: str) -> list[Checkpoint]:
    stmt = select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step)
    return list(session.scalars(stmt))


def list_artifacts(session: Session, job_id: str) -> list[Artifact]:
    stmt = select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.name)
    return list(session.scalars(stmt))


def list_tenant_artifacts(
    session: Session, tenant_id: str, name: str, limit: int
) -> list[tuple[Artifact, Job]]:
    """The tenant's artifacts called `name` (e.g. student.safetensors: the weights its
    jobs trained, which can teach a new job), newest first, with their jobs."""
    stmt = (
        select(Artifact, Job)
        .join(Job, Job.id == Artifact.job_id)
        .where(Artifact.tenant_id == tenant_id, Artifact.name == name)
        .order_by(Artifact.created_at.desc(), Artifact.id.desc())
        .limit(limit)
    )
    return [(art, job) for art, job in session.execute(stmt)]


def get_artifact(
    session: Session, settings: Settings, tenant_id: str, artifact_id: str
) -> Artifact:
    row = repo.get_owned(session, Artifact, tenant_id, artifact_id)
    if row is None or not storage.exists(settings, row.path):
        raise NotFound("artifact", artifact_id)
    return row


def events_after(session: Session, job_id: str, after: int, limit: int) -> list[JobEvent]:
    stmt = (
        select(JobEvent)
        .where(JobEvent.job_id == job_id, JobEvent.seq > after)
        .order_by(JobEvent.seq)
        .limit(limit)
    )
    return list(session.scalars(stmt))


def metric_series(session: Session, job_id: str) -> list[dict[str, Any]]:
    stmt = (
        select(JobEvent)
        .where(JobEvent.job_id == job_id, JobEvent.type.in_(("progress", "epoch")))
        .order_by(JobEvent.seq)
    )
    return [{"seq": e.seq, "type": e.type, **e.data} for e in session.scalars(stmt)]
