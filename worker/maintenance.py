"""The reaper and the sweep, run periodically by `kd serve` and by `kd worker`.
Both are safe to run in many processes at once: every change is a conditional UPDATE.

- reaper: a job whose lease expired (its worker died) goes back to `queued`, or to
  `failed` after max_attempts, or to `cancelled` if a cancel was pending.
- sweep (Celery only): a job still queued after `republish_after_s` is published again,
  covering messages lost with a Redis restart.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy.exc import SQLAlchemyError

from app.broker import publish
from app.db import repository as repo
from app.db.session import session_scope
from app.services import lifecycle
from app.settings import Settings

log = logging.getLogger("kd.maintenance")


def reap_once(settings: Settings) -> list[tuple[str, str]]:
    changed = []
    with session_scope(settings.db_url) as session:
        ids = repo.expired_job_ids(session)
    for job_id in ids:
        with session_scope(settings.db_url) as session:
            after = lifecycle.reap(session, job_id)
        if after is not None:
            after.run(settings)
            changed.append((job_id, str(after.status)))
    return changed


def sweep_once(settings: Settings) -> list[str]:
    if not settings.broker_url:
        return []
    with session_scope(settings.db_url) as session:
        stale = repo.stale_queued(session, settings.republish_after_s)
    published = [
        job_id
        for job_id, queue, prio, copies in stale
        if publish(settings.broker_url, job_id, queue, prio, copies)
    ]
    with session_scope(settings.db_url) as session:
        repo.mark_published(session, published)
    return published


def expire_uploads(settings: Settings) -> list[str]:
    """Uploads in parts not completed in time: rows and parts deleted."""
    from app.services import uploads

    with session_scope(settings.db_url) as session:
        return uploads.expire(session, settings)


class Maintenance:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="kd-maintenance", daemon=True)

    def start(self) -> Maintenance:
        self.thread.start()
        return self

    def _loop(self) -> None:
        while not self.stop.wait(self.settings.sweep_interval_s):
            try:
                reap_once(self.settings)
                sweep_once(self.settings)
                expire_uploads(self.settings)
            except SQLAlchemyError as exc:
                log.warning("maintenance skipped a round: %s", exc)
