"""Every SQL statement of gang placement: one job on several hosts (resources.nodes M).

A worker of the job's pool that is free offers its host (`offer`): a row with a lease,
renewed while it waits. The offer that makes M live offers claims the job
(repository.claim, the same conditional UPDATE as a one-host job) and gives the M
oldest offers their node ranks, all in one transaction (`place`): all or nothing. An
offer whose worker gives up is withdrawn only while it is unplaced (`withdraw`), so a
placement and a withdrawal cannot both win; an offer whose worker died expires and is
deleted by the next offer. Placed rows are the job's members for that attempt: each
renews its own lease and the job's (`heartbeat`), and goes when its run ends
(`release`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from app.db import repository as repo
from app.db.models import Job, JobSlot, JobStatus, new_id, utcnow


@dataclass(frozen=True)
class Member:
    """A placed slot: the host's node rank in one attempt of the job."""

    slot_id: str
    host: str
    node_rank: int
    attempt: int


def offer(session: Session, job_id: str, host: str, worker_id: str, lease_s: float) -> str | None:
    """Offer `host` for the queued job; returns the slot's id, or None when the job is
    not queued or this host already holds a place in it. Expired offers go first."""
    now = utcnow()
    session.execute(delete(JobSlot).where(JobSlot.job_id == job_id, JobSlot.lease_expires_at < now))
    job = session.get(Job, job_id)
    if job is None or job.status != JobStatus.QUEUED or job.attempt >= job.max_attempts:
        return None
    taken = session.scalar(select(JobSlot.id).where(JobSlot.job_id == job_id, JobSlot.host == host))
    if taken is not None:
        return None
    slot = JobSlot(
        id=new_id("slot"),
        job_id=job_id,
        host=host,
        worker_id=worker_id,
        offered_at=now,
        lease_expires_at=now + timedelta(seconds=lease_s),
    )
    session.add(slot)
    session.flush()  # the unique (job, host) pair is checked here, not at commit
    return slot.id


def waiting(session: Session, slot_id: str, lease_s: float) -> Member | None | bool:
    """Renew an offer: True while it waits unplaced, its Member once placed, False once
    it is gone (expired and deleted: the worker was too slow to renew it)."""
    now = utcnow()
    row = session.execute(
        update(JobSlot)
        .where(JobSlot.id == slot_id)
        .values(lease_expires_at=now + timedelta(seconds=lease_s))
        .returning(JobSlot.host, JobSlot.node_rank, JobSlot.attempt)
    ).first()
    if row is None:
        return False
    host, node_rank, attempt = row
    if node_rank is None or attempt is None:
        return True
    return Member(slot_id, str(host), int(node_rank), int(attempt))


def place(session: Session, job_id: str, nodes: int, worker_id: str, lease_s: float) -> int | None:
    """With `nodes` live unplaced offers: claim the job and give the oldest offers node
    ranks 0..nodes-1; returns the attempt, or None (too few offers, or the job was
    claimed by another placer). Raises LookupError when an offer went away between the
    read and the update: the caller rolls the whole transaction back."""
    now = utcnow()
    offers = list(
        session.scalars(
            select(JobSlot.id)
            .where(
                JobSlot.job_id == job_id,
                JobSlot.node_rank.is_(None),
                JobSlot.lease_expires_at >= now,
            )
            .order_by(JobSlot.offered_at, JobSlot.id)
            .limit(nodes)
        )
    )
    if len(offers) < nodes:
        return None
    job = repo.claim(session, job_id, f"gang of {nodes} ({worker_id})", lease_s)
    if job is None:
        return None
    lease = now + timedelta(seconds=lease_s)
    for rank, slot_id in enumerate(offers):
        done = session.execute(
            update(JobSlot)
            .where(JobSlot.id == slot_id, JobSlot.node_rank.is_(None))
            .values(node_rank=rank, attempt=job.attempt, lease_expires_at=lease)
        )
        if done.rowcount != 1:  # type: ignore[attr-defined]
            raise LookupError("an offer was withdrawn while the job was placed")
    return job.attempt


def withdraw(session: Session, slot_id: str) -> bool:
    """Take an unplaced offer back; False when it was placed first (the worker runs)."""
    done = session.execute(
        delete(JobSlot).where(JobSlot.id == slot_id, JobSlot.node_rank.is_(None))
    )
    return bool(done.rowcount)  # type: ignore[attr-defined]


def release(session: Session, slot_id: str) -> None:
    """A member's run has ended: its host is free for the job's next attempt."""
    session.execute(delete(JobSlot).where(JobSlot.id == slot_id))


def members(session: Session, job_id: str, attempt: int) -> list[JobSlot]:
    """The placed slots of one attempt, by node rank."""
    return list(
        session.scalars(
            select(JobSlot)
            .where(JobSlot.job_id == job_id, JobSlot.attempt == attempt)
            .order_by(JobSlot.node_rank)
        )
    )


def set_rendezvous(session: Session, slot_id: str, endpoint: str) -> None:
    """Node 0 publishes where its agent hosts the rendezvous (host:port)."""
    session.execute(update(JobSlot).where(JobSlot.id == slot_id).values(rendezvous=endpoint))


def rendezvous(session: Session, job_id: str, attempt: int) -> str | None:
    return session.scalar(
        select(JobSlot.rendezvous).where(
            JobSlot.job_id == job_id, JobSlot.attempt == attempt, JobSlot.node_rank == 0
        )
    )


def heartbeat(
    session: Session,
    member: Member,
    job_id: str,
    lease_s: float,
    progress: dict[str, Any] | None,
    events: list[tuple[str, dict[str, Any]]],
) -> str | None:
    """A member's heartbeat: renew its slot and the job's lease, store progress and
    events. None when the slot or the job's attempt is gone (the job moved on)."""
    renewed = session.execute(
        update(JobSlot)
        .where(JobSlot.id == member.slot_id, JobSlot.attempt == member.attempt)
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_s))
    )
    if renewed.rowcount != 1:  # type: ignore[attr-defined]
        return None
    return repo.heartbeat(session, job_id, None, member.attempt, lease_s, progress, events)
