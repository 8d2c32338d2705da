"""What every process of the service does first with its data folder and database, kept
light (no FastAPI, no torch): `kd keys` on the embedded SQLite needs it and nothing of
the app, and importing the app costs a process seconds (job validation loads torch)."""

from __future__ import annotations

import os

from app.db.migrate import upgrade
from app.db.session import session_scope
from app.services import egress
from app.services.keys import ensure_key
from app.settings import Settings


def private_files(settings: Settings) -> None:
    """Whatever the umask: files this process creates are 0600 and folders 0700 (the
    training processes inherit the mask), and the data folder is 0700."""
    os.umask(0o077)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(settings.data_dir, 0o700)


def prepare(settings: Settings) -> None:
    """Create folders; the embedded SQLite database upgrades itself (PostgreSQL is
    migrated on purpose with `kd migrate`); the libraries' telemetry is turned off."""
    egress.quiet_libraries()
    private_files(settings)
    settings.files_dir.mkdir(parents=True, exist_ok=True)
    settings.jobs_dir.mkdir(parents=True, exist_ok=True)
    if settings.is_sqlite:
        upgrade(settings.db_url)
        for path in settings.data_dir.glob("kdservice.db*"):
            os.chmod(path, 0o600)
    if settings.bootstrap_api_key:
        with session_scope(settings.db_url) as session:
            ensure_key(session, "default", settings.bootstrap_api_key)
