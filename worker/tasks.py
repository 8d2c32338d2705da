"""Celery tasks: thin. The message carries only the job id; the database has the rest."""

from __future__ import annotations

from app.queue import TASK_NAME, celery_app
from app.settings import get_settings
from worker.runner import claim_and_run

settings = get_settings()
app = celery_app(settings.broker_url)


@app.task(name=TASK_NAME)
def run_job(job_id: str) -> str | None:
    # a duplicate or stale message finds the job claimed or finished and returns at once
    return claim_and_run(settings, job_id)
