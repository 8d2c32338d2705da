"""Alembic: upgrade from an empty database on both engines, and no drift from the models."""

import pytest
from sqlalchemy import inspect

from app.db.migrate import check, upgrade
from app.db.models import Base
from app.db.session import get_engine
from tests.app.conftest import create_pg_database, drop_pg_database


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    name = create_pg_database()
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    yield url
    get_engine(url).dispose()
    drop_pg_database(name)


def test_upgrade_from_empty_creates_every_table_and_check_is_clean(empty_db):
    upgrade(empty_db)
    tables = set(inspect(get_engine(empty_db)).get_table_names())
    assert set(Base.metadata.tables) <= tables and "alembic_version" in tables
    check(empty_db)  # raises if the models and the migrations disagree
    upgrade(empty_db)  # idempotent
