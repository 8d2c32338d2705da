"""Every SQL statement of the job lifecycle, shared by the API and both executors.

State changes are conditional UPDATEs (`... WHERE status IN (...)`), so two processes
racing for the same job cannot both win; each successful change records a transition
and a numbered `status` event in the same transaction. Every UPDATE of what the API
shows of a job bumps `jobs.version` (its ETag, and the key of the rendered-job cache).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.orm import Session

from app.db.models import TERMINAL, Job, JobEvent, JobStatus, JobTransition, hosts_needed, utcnow


def append_event(session: Session, job_id: str, type_: str, data: dict[str, Any]) -> int:
    """Append an event numbered 1, 2, 3... per job. The counter lives on the job row, so
    the increment is atomic (and serialises writers of the same job) on both databases."""
    seq = session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(event_seq=Job.event_seq + 1)
        .returning(Job.event_seq)
    ).scalar_one()
    session.add(JobEvent(job_id=job_id, seq=seq, type=type_, data=data))
    return int(seq)


def _record(
    session: Session, job_id: str, from_status: str | None, to: str, reason: str, attempt: int
) -> None:
    session.add(
        JobTransition(
            job_id=job_id, from_status=from_status, to_status=to, reason=reason, attempt=attempt
        )
    )
    append_event(
        session,
        job_id,
        "status",
        {"from": from_status, "status": to, "reason": reason, "attempt": attempt},
    )


def record_created(session: Session, job: Job) -> None:
    _record(session, job.id, None, job.status, "submitted", 0)


def change_status(  # only app.services.lifecycle calls this: it adds the side effects
    session: Session,
    job_id: str,
    from_statuses: tuple[str, ...],
    to: str,
    reason: str,
    *,
    worker_id: str | None = None,
    attempt: int | None = None,
    **values: Any,
) -> bool:
    """Move a job to `to` if it is in one of `from_statuses` (and, when given, still held by
    `worker_id` at `attempt`). Returns whether this call made the change."""
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        return False
    stmt = update(Job).where(Job.id == job_id, Job.status.in_(from_statuses))
    if worker_id is not None:
        stmt = stmt.where(Job.worker_id == worker_id)
    if attempt is not None:
        stmt = stmt.where(Job.attempt == attempt)
    if to in TERMINAL:
        values.setdefault("finished_at", utcnow())
        values.setdefault("lease_expires_at", None)
    previous = job.status
    result = cast(
        CursorResult, session.execute(stmt.values(status=to, version=Job.version + 1, **values))
    )
    if result.rowcount != 1:
        return False
    _record(session, job_id, previous, to, reason, attempt if attempt is not None else job.attempt)
    session.refresh(job)
    return True


def claim(session: Session, job_id: str, worker_id: str, lease_s: float) -> Job | None:
    """One conditional UPDATE: take a queued job if it has attempts left. No row back
    means someone else has it: return None. A running job whose lease expired is not
    taken here: the reaper puts it back in the queue first (or ends it), so the
    transitions of a job never show two runs at once (running -> running)."""
    now = utcnow()
    job = session.get(Job, job_id)
    if job is None:
        return None
    previous = job.status
    row = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED, Job.attempt < Job.max_attempts)
        .values(
            status=JobStatus.RUNNING,
            attempt=Job.attempt + 1,
            worker_id=worker_id,
            heartbeat_at=now,
            lease_expires_at=now + timedelta(seconds=lease_s),
            started_at=func.coalesce(Job.started_at, now),
            error=None,
            version=Job.version + 1,
        )
        .returning(Job.attempt)
    ).first()
    if row is None:
        return None
    attempt = int(row[0])
    _record(session, job_id, previous, JobStatus.RUNNING, f"claimed by {worker_id}", attempt)
    session.refresh(job)
    return job


def heartbeat(
    session: Session,
    job_id: str,
    worker_id: str | None,
    attempt: int,
    lease_s: float,
    progress: dict[str, Any] | None,
    events: list[tuple[str, dict[str, Any]]],
) -> str | None:
    """Renew the lease, store progress and append events in one transaction. Returns the
    job's status, or None if this worker no longer holds the job (lease lost).
    `worker_id` None: a multi-host job, held by its members' slots (app.db.slots), which
    the caller has renewed; the attempt alone is the condition."""
    now = utcnow()
    values: dict[str, Any] = {
        "heartbeat_at": now,
        "lease_expires_at": now + timedelta(seconds=lease_s),
    }
    if progress is not None:  # the lease alone is not shown: no new version for it
        values["progress"] = progress
        values["version"] = Job.version + 1
    row = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.attempt == attempt,
            Job.status.in_((JobStatus.RUNNING, JobStatus.CANCELLING)),
            *([Job.worker_id == worker_id] if worker_id is not None else []),
        )
        .values(**values)
        .returning(Job.status)
    ).first()
    if row is None:
        return None
    for type_, data in events:
        append_event(session, job_id, type_, data)
    return str(row[0])


def _fair_order(pools: set[str] | None = None, priority: int | None = None) -> Any:
    """Queued jobs (of `pools`, of one `priority`, when given) with their turn: within
    one pool and priority, each tenant's oldest job has turn 1, its next turn 2...
    Workers take priority first, then turn, then age, so tenants of the same priority
    alternate instead of the first to flood the queue going first (fair share). The
    filters go inside, so only the rows asked about are ranked."""
    turn = func.row_number().over(
        partition_by=(Job.queue, Job.priority, Job.tenant_id), order_by=(Job.created_at, Job.id)
    )
    stmt = select(Job.id, Job.queue, Job.priority, Job.created_at, turn.label("turn")).where(
        Job.status == JobStatus.QUEUED
    )
    if pools is not None:
        stmt = stmt.where(Job.queue.in_(sorted(pools)))
    if priority is not None:
        stmt = stmt.where(Job.priority == priority)
    return stmt.subquery()


def queued_job_ids(session: Session, pools: set[str] | None = None, limit: int = 10) -> list[str]:
    """The next jobs to run, in fair order, from `pools` (None: every pool)."""
    q = _fair_order(pools)
    stmt = (
        select(q.c.id).order_by(q.c.priority.desc(), q.c.turn, q.c.created_at, q.c.id).limit(limit)
    )
    return list(session.scalars(stmt))


def expired_job_ids(session: Session, now: datetime | None = None) -> list[str]:
    now = now or utcnow()
    stmt = select(Job.id).where(
        Job.status.in_((JobStatus.RUNNING, JobStatus.CANCELLING)), Job.lease_expires_at < now
    )
    return list(session.scalars(stmt))


def stale_queued(session: Session, older_than_s: float) -> list[tuple[str, str, int, int]]:
    """(id, queue, priority, messages) of queued jobs not published for a while; a
    multi-host job needs one message per host (resources.nodes)."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    stmt = select(Job.id, Job.queue, Job.priority, Job.spec).where(
        Job.status == JobStatus.QUEUED,
        (Job.published_at.is_(None)) | (Job.published_at < cutoff),
    )
    return [(i, q, p, hosts_needed(spec)) for i, q, p, spec in session.execute(stmt)]


def mark_published(session: Session, job_ids: list[str]) -> None:
    if job_ids:
        session.execute(update(Job).where(Job.id.in_(job_ids)).values(published_at=utcnow()))


def get_owned(session: Session, model: Any, tenant_id: str, id_: str) -> Any | None:
    """The row of `model` with this id if it belongs to the tenant, else None (the API
    answers 404 either way, so another tenant's ids are indistinguishable from unknown)."""
    row = session.get(model, id_)
    return row if row is not None and row.tenant_id == tenant_id else None


def page_newest_first(
    session: Session, stmt: Any, model: Any, cursor: Any | None, limit: int
) -> tuple[list[Any], bool]:
    """Cursor pagination over rows with (created_at, id), newest first: the page after
    `cursor` (a row of `model`), at most `limit` rows, and whether more follow."""
    if cursor is not None:
        stmt = stmt.where(
            (model.created_at < cursor.created_at)
            | ((model.created_at == cursor.created_at) & (model.id < cursor.id))
        )
    rows = list(
        session.scalars(stmt.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1))
    )
    return rows[:limit], len(rows) > limit


def queue_positions(session: Session, jobs: list[Job]) -> dict[str, int]:
    """1-based positions of the queued ones among `jobs`, each in its own queue (worker
    pool), in the order workers take them (`queued_job_ids`). One query; only the pools
    of these jobs are ranked (for one job, only its priority in its pool)."""
    queued = [j for j in jobs if j.status == JobStatus.QUEUED]
    if not queued:
        return {}
    if len(queued) == 1:  # create, get: the common case, and the cheap one
        return {queued[0].id: _position(session, queued[0])}
    q = _fair_order({j.queue for j in queued})
    order = func.row_number().over(
        partition_by=q.c.queue, order_by=(q.c.priority.desc(), q.c.turn, q.c.created_at, q.c.id)
    )
    ranked = select(q.c.id, order.label("pos")).subquery()
    ids = [j.id for j in queued]
    rows = session.execute(select(ranked.c.id, ranked.c.pos).where(ranked.c.id.in_(ids)))
    return {job_id: int(pos) for job_id, pos in rows}


def _position(session: Session, job: Job) -> int:
    """One job's position: the queued jobs of higher priority in its pool (an indexed
    count), plus its rank among those of its own priority."""
    higher = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.status == JobStatus.QUEUED, Job.queue == job.queue, Job.priority > job.priority)
    )
    q = _fair_order({job.queue}, job.priority)
    order = func.row_number().over(order_by=(q.c.turn, q.c.created_at, q.c.id))
    ranked = select(q.c.id, order.label("pos")).subquery()
    rank = session.scalar(select(ranked.c.pos).where(ranked.c.id == job.id))
    return int(higher or 0) + int(rank or 1)
