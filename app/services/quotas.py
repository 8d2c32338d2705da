"""Per-tenant limits: active jobs, submissions per minute, stored bytes, highest priority.

Each limit is the tenant's own value (tenants table, set with `kd keys limits`) or the
service-wide default (Settings). Going over a rate or count raises LimitExceeded (429
with Retry-After); a priority above the tenant's ceiling is Invalid (422 on /priority).
On PostgreSQL the tenant's row is locked while a submission is checked and inserted,
so concurrent submissions cannot overshoot a limit together.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db.models import ACTIVE, Artifact, File, Job, Tenant, Upload, utcnow
from app.errors import Invalid, LimitExceeded, NotFound
from app.settings import Settings


@dataclass(frozen=True)
class Limits:
    max_active_jobs: int
    submissions_per_minute: int
    max_stored_bytes: int
    max_priority: int


def limits_for(tenant: Tenant, settings: Settings) -> Limits:
    def pick(name: str) -> int:
        own = getattr(tenant, name)
        return int(own) if own is not None else int(getattr(settings, name))

    return Limits(*(pick(n) for n in Limits.__dataclass_fields__))


def stored_bytes(session: Session, tenant_id: str) -> int:
    files = session.scalar(
        select(func.coalesce(func.sum(File.bytes), 0)).where(File.tenant_id == tenant_id)
    )
    arts = session.scalar(
        select(func.coalesce(func.sum(Artifact.bytes), 0)).where(Artifact.tenant_id == tenant_id)
    )
    # an upload in progress holds its declared size: open uploads cannot overfill a quota
    pending = session.scalar(
        select(func.coalesce(func.sum(Upload.bytes), 0)).where(Upload.tenant_id == tenant_id)
    )
    return int(files or 0) + int(arts or 0) + int(pending or 0)


def _tenant(session: Session, tenant_id: str, lock: bool = False) -> Tenant:
    stmt = select(Tenant).where(Tenant.id == tenant_id)
    tenant = session.scalar(stmt.with_for_update() if lock else stmt)
    if tenant is None:  # the key was valid a moment ago: the tenant was just deleted
        raise NotFound("tenant", tenant_id)
    return tenant


def check_submission(session: Session, settings: Settings, tenant_id: str, priority: int) -> None:
    """Raise unless the tenant may submit one more job now."""
    tenant = _tenant(session, tenant_id, lock=True)
    limits = limits_for(tenant, settings)
    if priority > limits.max_priority:
        raise Invalid(
            [("/priority", f"your highest allowed priority is {limits.max_priority}")],
            f"priority {priority} is above this tenant's limit of {limits.max_priority}",
        )
    active = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.tenant_id == tenant_id, Job.status.in_(ACTIVE))
    )
    if int(active or 0) >= limits.max_active_jobs:
        raise LimitExceeded(
            f"you have {active} active jobs (queued or running), the limit is "
            f"{limits.max_active_jobs}; wait for one to end or cancel one",
            30,
        )
    window_start = utcnow() - timedelta(seconds=60)
    recent = session.execute(
        select(func.count(), func.min(Job.created_at)).where(
            Job.tenant_id == tenant_id, Job.created_at > window_start
        )
    ).one()
    if int(recent[0] or 0) >= limits.submissions_per_minute:
        oldest = recent[1] or utcnow()
        wait = 60 - (utcnow() - oldest).total_seconds()
        raise LimitExceeded(
            f"over {limits.submissions_per_minute} submissions per minute", max(wait, 1)
        )
    used = stored_bytes(session, tenant_id)
    if used >= limits.max_stored_bytes:
        raise _storage_full(used, limits.max_stored_bytes)


def _storage_full(used: int, limit: int) -> LimitExceeded:
    return LimitExceeded(
        f"you store {used} bytes (files and job outputs), the limit is {limit}; "
        "delete files or finished jobs",
        3600,
    )


def check_storage(session: Session, settings: Settings, tenant_id: str, adding: int) -> None:
    """Raise unless the tenant may store `adding` more bytes."""
    limit = limits_for(_tenant(session, tenant_id), settings).max_stored_bytes
    used = stored_bytes(session, tenant_id)
    if used + adding > limit:
        raise _storage_full(used, limit)
