"""Celery tasks: thin. The message carries only the job id; the database has the rest."""

from __future__ import annotations

from app.broker import TASK_NAME, celery_app
from app.db.models import Job
from app.db.session import session_scope
from app.settings import get_settings
from worker.supervisor import run_next

settings = get_settings()
app = celery_app(settings.broker_url)


@app.task(name=TASK_NAME)
def run_job(job_id: str) -> str | None:
    """A message wakes the worker for one job of its pool; the database picks which one
    (fair share between tenants, see repository.queued_job_ids), so one tenant's flood
    of messages does not decide the order. Every queued job has a message, so each
    runs; a message left over (a duplicate, a republish) finds nothing queued and
    returns. Only queued jobs are claimed: a job whose worker died is put back in the
    queue by the reaper first, so one job never has two runs at once."""
    with session_scope(settings.db_url) as session:
        job = session.get(Job, job_id)
        pool = job.queue if job is not None else None
    return "ran" if pool is not None and run_next(settings, {pool}) else None
