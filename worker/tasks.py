"""Celery tasks: thin. The message carries only the job id; the database has the rest."""

from __future__ import annotations

from app.db.models import Job
from app.db.session import session_scope
from app.queue import TASK_NAME, celery_app
from app.settings import get_settings
from worker.runner import claim_and_run, run_next

settings = get_settings()
app = celery_app(settings.broker_url)


@app.task(name=TASK_NAME)
def run_job(job_id: str) -> str | None:
    """A message wakes the worker for one job of its pool; the database picks which one
    (fair share between tenants, see repository.queued_job_ids), so one tenant's flood
    of messages does not decide the order. Every job has its own message, so each runs
    once; a message left over finds nothing queued. A job whose worker died (lease
    expired, message redelivered) is taken by id."""
    with session_scope(settings.db_url) as session:
        job = session.get(Job, job_id)
        pool = job.queue if job is not None else None
    if pool is not None and run_next(settings, {pool}):
        return "ran"
    return claim_and_run(settings, job_id)
