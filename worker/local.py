"""The local executor (the embedded default): threads in the API process that poll the
database for queued jobs and run them through the same claim-and-run path as Celery."""

from __future__ import annotations

import logging
import threading

from sqlalchemy.exc import SQLAlchemyError

from app.settings import Settings
from worker.supervisor import run_next

log = logging.getLogger("kd.local")


class LocalExecutor:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._loop, name=f"kd-local-{i}", daemon=True)
            for i in range(settings.local_workers)
        ]

    def start(self) -> LocalExecutor:
        for t in self.threads:
            t.start()
        return self

    def _loop(self) -> None:
        while not self.stop.is_set():
            ran = False
            try:
                ran = run_next(self.settings, self.settings.served_pools(), len(self.threads) + 1)
            except SQLAlchemyError as exc:
                log.warning("local executor: database unavailable: %s", exc)
            except Exception:  # keep the executor alive whatever one job did
                log.exception("local executor: unexpected error")
            if not ran:
                self.stop.wait(self.settings.poll_interval_s)
