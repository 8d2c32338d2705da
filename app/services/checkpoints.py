"""A job's checkpoint rows: which the retention policy (`KD_KEEP_CHECKPOINTS`) deletes.
Kept apart from the job commands (app.services.jobs): the worker's supervisor, which
prunes after each checkpoint, needs none of their admission."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import Job
from app.services.job_reads import list_checkpoints


def prune_checkpoints(
    session: Session, job_id: str, keep: int, protect_steps: set[int]
) -> list[str]:
    """Delete the rows of the job's checkpoints but the newest `keep`, those at
    `protect_steps` (the one this attempt resumed from) and those a retry resumes from;
    returns the locations no kept row shares, to delete once this commits."""
    rows = list_checkpoints(session, job_id)
    if len(rows) <= keep:
        return []
    referenced = set(
        session.scalars(
            select(Job.resume_checkpoint_id).where(
                Job.resume_checkpoint_id.in_([row.id for row in rows])
            )
        )
    )
    doomed = [
        row
        for row in rows[: len(rows) - keep]
        if row.step not in protect_steps and row.id not in referenced
    ]
    kept = {row.path for row in rows if row not in doomed}
    for row in doomed:
        session.delete(row)
    return sorted({row.path for row in doomed} - kept)
