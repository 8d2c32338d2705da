"""Worker pools and priority with real parts: PostgreSQL, Redis and `kd worker
--queues kd.h200` as a process. A worker of the h200 pool runs only h200 jobs, and takes
the most urgent waiting job first."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from sqlalchemy import select

from app.broker import celery_app, publish
from app.db.models import Job, JobTransition
from app.db.session import session_scope
from app.services.jobs import create_job
from app.services.keys import create_key
from app.settings import Settings
from kdcore.spec import JobSpec
from tests.app.conftest import create_pg_database, drop_pg_database, tiny_job
from tests.support.procs import TRAINING_IN_A_THREAD, Proc

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REDIS_DB = 6


def submit(settings: Settings, tenant_id: str, spec: dict) -> str:
    with session_scope(settings.db_url) as session:
        job = create_job(
            session,
            settings,
            tenant_id=tenant_id,
            spec=JobSpec.model_validate(spec),
            idempotency_key=None,
        ).job
        assert job is not None
        route = (job.id, job.queue, job.priority)
    publish(settings.broker_url, *route)
    return route[0]


def status(settings: Settings, job_id: str) -> str:
    with session_scope(settings.db_url) as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job.status


def started_in_order(settings: Settings, ids: list[str]) -> list[str]:
    """The jobs in the order their claims committed: the database's own sequence of
    transitions to running, not timestamps (a clock can step, two claims can share one)."""
    with session_scope(settings.db_url) as session:
        claims = session.scalars(
            select(JobTransition.job_id)
            .where(JobTransition.job_id.in_(ids), JobTransition.to_status == "running")
            .order_by(JobTransition.id)
        )
        return list(claims)


def wait_done(settings: Settings, ids: list[str], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(status(settings, i) in ("succeeded", "failed") for i in ids):
            return
        time.sleep(0.5)
    raise AssertionError([status(settings, i) for i in ids])


def test_pools_and_priority_with_a_real_worker(tmp_path: Path) -> None:
    db = create_pg_database()
    redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB).flushdb()
    env = {
        "KD_DATA_DIR": str(tmp_path / "data"),
        "KD_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{db}",
        "KD_BROKER_URL": f"redis://127.0.0.1:6379/{REDIS_DB}",
        "KD_REPUBLISH_AFTER_S": "3600",
        "KD_MAX_PRIORITY": "9",
    }
    settings = Settings(**{k[3:].lower(): v for k, v in env.items()})
    worker = None
    try:
        migrate = subprocess.run(
            [sys.executable, "-m", "kdservice.cli", "migrate"],
            env={**os.environ, **env},
            capture_output=True,
        )
        assert migrate.returncode == 0, migrate.stderr
        with session_scope(settings.db_url) as session:
            row, _ = create_key(session, "routing")
            tenant_id = row.tenant_id
        # waiting before any worker runs: one default-pool job, then h200 jobs of rising urgency
        default_pool = submit(settings, tenant_id, tiny_job(name="default-pool"))
        spec = {"resources": {"gpu_type": "h200"}, "training": {"epochs": 1, "batch_size": 32}}
        low = submit(settings, tenant_id, tiny_job(name="low", **spec))
        mid = submit(settings, tenant_id, tiny_job(name="mid", priority=3, **spec))
        high = submit(settings, tenant_id, tiny_job(name="high", priority=9, **spec))
        worker = Proc(
            ["worker", "--queues", "kd.h200"],
            {**env, **TRAINING_IN_A_THREAD},
            tmp_path / "worker.log",
        )
        wait_done(settings, [low, mid, high])
        names = {low: "low", mid: "mid", high: "high"}
        assert started_in_order(settings, list(names)) == [high, mid, low], names
        # the worker consumes its pool's queue only, so the default pool's job stays
        # queued: asked of the worker itself (Celery's inspect), not waited out
        consumed = celery_app(env["KD_BROKER_URL"]).control.inspect(timeout=10).active_queues()
        assert consumed and [[q["name"] for q in qs] for qs in consumed.values()] == [["kd.h200"]]
        assert status(settings, default_pool) == "queued"
    finally:
        if worker is not None:
            worker.stop()
        drop_pg_database(db)
