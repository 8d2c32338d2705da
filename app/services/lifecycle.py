"""The one place where a job changes status.

`transition()` checks that the move is allowed, makes it with a conditional UPDATE
(repository.change_status: the transition and its `status` event are recorded in the
same transaction), writes the webhook outbox row when the job ends, and returns what
must run *after* the caller commits (`AfterCommit.run`: nudge SSE readers, publish a
requeued job, wake the webhook loop). Every path goes through here: submission
(`created`), claim, the worker's end of a run, the claim-time refusal, cancel, the
reaper.

    queued ──claim──> running ──> succeeded | failed | cancelled
       │                 │  └──> queued (retry: crash, lost lease)
       └──> cancelled    └──> cancelling ──> cancelled | failed | succeeded
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from app import nudge
from app.broker import publish
from app.db import repository as repo
from app.db.models import TERMINAL, Job, JobStatus, hosts_needed, utcnow
from app.services import webhooks
from app.settings import Settings

S = JobStatus
ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    S.QUEUED: frozenset({S.RUNNING, S.CANCELLED}),
    S.RUNNING: frozenset({S.QUEUED, S.CANCELLING, S.SUCCEEDED, S.FAILED, S.CANCELLED}),
    S.CANCELLING: frozenset({S.CANCELLED, S.FAILED}),
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
}


class IllegalTransition(ValueError):
    """A caller asked for a move the lifecycle does not have (a programming error)."""


@dataclass(frozen=True)
class AfterCommit:
    """What a transition needs once its transaction is committed."""

    job_id: str
    status: JobStatus
    # (queue, priority, messages) of a requeued job: one message per host it needs
    publish_to: tuple[str, int, int] | None = None
    webhook: bool = False

    def run(self, settings: Settings) -> None:
        nudge.nudge(settings.broker_url, self.job_id)
        if self.publish_to is not None:
            publish(settings.broker_url, self.job_id, *self.publish_to)
        if self.webhook:
            webhooks.wake()


def transition(
    session: Session,
    job_id: str,
    expect: tuple[JobStatus, ...],
    to: JobStatus,
    reason: str,
    **values: Any,
) -> AfterCommit | None:
    """Move the job from one of `expect` to `to` (in the caller's transaction). Extra
    `values` are columns to set; `worker_id`/`attempt` make the move conditional on
    the caller still holding the job. None: the job was not in `expect` (another
    process moved it first), and nothing was written."""
    for source in expect:
        if to not in ALLOWED[source]:
            raise IllegalTransition(f"{source} -> {to} is not a job transition")
    if not repo.change_status(session, job_id, expect, to, reason, **values):
        return None
    job = session.get(Job, job_id)
    assert job is not None  # the conditional UPDATE just matched it
    delivery = webhooks.enqueue(session, job) if to in TERMINAL else None
    requeued = (job.queue, job.priority, hosts_needed(job.spec)) if to == S.QUEUED else None
    return AfterCommit(job_id, to, requeued, delivery is not None)


def created(session: Session, job: Job) -> None:
    """A new job's first transition (None -> queued) and event; it is published after
    commit by the route (the executors may also find it by polling)."""
    repo.record_created(session, job)


def claim(session: Session, job_id: str, worker: str, lease_s: float) -> Job | None:
    """queued -> running for `worker`, with a lease (one conditional UPDATE: of many
    workers claiming one job, one wins; a running job is never claimed)."""
    return repo.claim(session, job_id, worker, lease_s)


def cancel(session: Session, job: Job) -> AfterCommit | None:
    """A client's cancel: a queued job ends now; a running one is asked to stop (its
    worker ends it). A worker may claim the job between the caller's read and this
    write (queued -> running): the job is then read again and the cancel applied to
    what it is now, so a cancel that races a claim is never lost. None if it has
    ended (the caller re-reads it)."""
    for _ in range(3):  # each retry follows a move forward: queued, running, ended
        if job.status == S.QUEUED:
            after = transition(
                session, job.id, (S.QUEUED,), S.CANCELLED, "cancelled by the client while queued"
            )
        elif job.status == S.RUNNING:
            after = transition(
                session, job.id, (S.RUNNING,), S.CANCELLING, "cancel requested by the client"
            )
        else:
            return None
        if after is not None:
            return after
        session.refresh(job)
    return None


def reap(session: Session, job_id: str) -> AfterCommit | None:
    """A job whose lease expired (its worker stopped renewing it): back to the queue,
    or ended: failed after max_attempts, cancelled if a cancel was pending."""
    job = session.get(Job, job_id, populate_existing=True)
    if (
        job is None
        or job.status not in (S.RUNNING, S.CANCELLING)
        or job.lease_expires_at is None
        or job.lease_expires_at >= utcnow()
    ):
        return None
    held: dict[str, Any] = {"worker_id": job.worker_id, "attempt": job.attempt}
    lost = f"lease expired (worker {job.worker_id} stopped renewing it)"
    if job.status == S.CANCELLING:
        return transition(session, job_id, (S.CANCELLING,), S.CANCELLED, lost, **held)
    if job.attempt >= job.max_attempts:
        why = f"{lost}; no attempts left ({job.attempt}/{job.max_attempts})"
        error = f"{lost} after {job.attempt} attempts"
        return transition(session, job_id, (S.RUNNING,), S.FAILED, why, error=error, **held)
    return transition(
        session,
        job_id,
        (S.RUNNING,),
        S.QUEUED,
        lost,
        lease_expires_at=None,
        published_at=None,
        **held,
    )
