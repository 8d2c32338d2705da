"""Alembic, driven from code: `kd migrate` and the embedded default's self-upgrade."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

ROOT = Path(__file__).resolve().parents[2]


def alembic_config(db_url: str) -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.attributes["db_url"] = db_url
    return cfg


def upgrade(db_url: str) -> None:
    command.upgrade(alembic_config(db_url), "head")


def check(db_url: str) -> None:
    """Raises if the models and the migrations disagree (alembic check)."""
    command.check(alembic_config(db_url))
