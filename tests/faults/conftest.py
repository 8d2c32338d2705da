"""Fault tests share the PostgreSQL fixture of the service tests."""

from tests.app.conftest import pg_url  # noqa: F401 (a fixture, used by name)
