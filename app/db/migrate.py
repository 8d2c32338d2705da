"""Alembic, driven from code: `kd migrate` and the embedded default's self-upgrade.

The scripts live inside the package (app/db/migrations, shipped as package data) and
the settings are made here, with no alembic.ini: the same calls work from a checkout,
a wheel or the image. A database already at head is left alone and says nothing, so
a start that upgrades logs it once."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from app.db.session import get_engine

SCRIPTS = Path(__file__).resolve().parent / "migrations"
log = logging.getLogger("kd.db")


def alembic_config(db_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPTS))
    cfg.set_main_option("path_separator", "os")
    cfg.attributes["db_url"] = db_url
    return cfg


def current_revision(db_url: str) -> str | None:
    with get_engine(db_url).connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("")).get_current_head()


def upgrade(db_url: str) -> bool:
    """Upgrade to head; False (and nothing done) when the database is already there."""
    before, head = current_revision(db_url), head_revision()
    if before == head:
        return False
    command.upgrade(alembic_config(db_url), "head")
    log.info("database upgraded from %s to %s", before or "empty", head)
    return True


def check(db_url: str) -> None:
    """Raises if the models and the migrations disagree (alembic check)."""
    command.check(alembic_config(db_url))
