"""Fixtures for the service: a real database (SQLite file or a fresh PostgreSQL
database), migrated with Alembic, and a TestClient over the real app."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import boto3
import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient

from app.db.migrate import upgrade
from app.db.session import session_scope
from app.main import create_app
from app.services.keys import create_key
from app.settings import Settings
from tests.support.procs import free_port
from tests.support.specs import tiny_job

__all__ = ["Api", "build_api", "in_process", "make_settings", "tiny_job"]

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


def create_pg_database() -> str:
    name = f"kd_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_pg_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    name = create_pg_database()
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    upgrade(url)
    yield url
    from app.db.session import get_engine

    get_engine(url).dispose()
    drop_pg_database(name)


def make_settings(tmp_path, db_url: str = "", **overrides) -> Settings:
    """The service's settings for a test. Training runs in a thread of the test process
    (worker.launch): the same kdcore run and messages, without a new interpreter's ~9 s
    of imports. Tests of the training process itself use `in_process`."""
    return Settings(
        data_dir=tmp_path / "data",
        database_url=db_url,
        broker_url="",
        heartbeat_s=0.3,
        lease_s=30,
        # webhooks of these tests point at loopback receivers (or at nothing: the
        # outbox row is what they check); the URL policy itself is tested in security/
        **{
            "metrics_cache_s": 0,
            "webhook_allow": "127.0.0.1",
            "training_launch": "thread",
            **overrides,
        },
    )


def in_process(settings: Settings) -> Settings:
    """The same settings, training in a process of its own: for tests of that process
    (kill, cancel by signal, timeouts, what it inherits)."""
    return settings.model_copy(update={"training_launch": "process"})


class Api:
    """A TestClient plus two tenants' keys."""

    def __init__(self, client: TestClient, settings: Settings, key_a: str, key_b: str):
        self.client, self.settings = client, settings
        self.a = {"Authorization": f"Bearer {key_a}"}
        self.b = {"Authorization": f"Bearer {key_b}"}
        self.key_a = key_a

    def request(self, method, url, tenant="a", **kw):
        headers = {**getattr(self, tenant), **kw.pop("headers", {})}
        return self.client.request(method, url, headers=headers, **kw)

    def get(self, url, **kw):
        return self.request("GET", url, **kw)

    def post(self, url, **kw):
        return self.request("POST", url, **kw)

    def delete(self, url, **kw):
        return self.request("DELETE", url, **kw)

    def head(self, url, **kw):
        return self.request("HEAD", url, **kw)


def build_api(settings: Settings) -> Iterator[Api]:
    app = create_app(settings)
    with TestClient(app) as client:  # runs the lifespan: migrations on SQLite
        if not settings.is_sqlite:
            upgrade(settings.db_url)
        with session_scope(settings.db_url) as session:
            _, key_a = create_key(session, f"tenant-a-{secrets.token_hex(4)}")
            _, key_b = create_key(session, f"tenant-b-{secrets.token_hex(4)}")
        yield Api(client, settings, key_a, key_b)


@pytest.fixture
def api(tmp_path) -> Iterator[Api]:
    yield from build_api(make_settings(tmp_path))


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db_api(request, tmp_path) -> Iterator[Api]:
    url = "" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    yield from build_api(make_settings(tmp_path, url))


BUCKET = "kd-artifacts"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A real S3-compatible server (moto in server mode, its own process on 127.0.0.1)
    with the bucket BUCKET."""
    port = free_port()
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ.update({"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"})
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        boto3.client("s3", endpoint_url=url, region_name="us-east-1").create_bucket(Bucket=BUCKET)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
