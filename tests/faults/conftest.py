"""Fault tests share the PostgreSQL fixture of the service tests, and run their
clusters on a Redis and a PostgreSQL of their own, which they may restart."""

from collections.abc import Iterator

import pytest

from tests.app.conftest import pg_url  # noqa: F401 (a fixture, used by name)
from tests.faults.servers import OwnPostgres, OwnRedis


@pytest.fixture(scope="session")
def own_redis() -> Iterator[OwnRedis]:
    server = OwnRedis()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def own_postgres() -> Iterator[OwnPostgres]:
    server = OwnPostgres()
    yield server
    server.close()
