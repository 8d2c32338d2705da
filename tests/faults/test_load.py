"""Load and concurrency against real processes on PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import time

import httpx
import pytest
from sqlalchemy import func, select

from app.db.models import Job
from app.db.session import session_scope
from tests.faults.cluster import Cluster, write_result
from tests.support.procs import TRAINING_IN_A_THREAD
from tests.support.specs import training_spec

pytestmark = [pytest.mark.integration, pytest.mark.slow(seconds=152)]


@pytest.fixture
def cluster(tmp_path, own_redis, own_postgres):
    c = Cluster(tmp_path, own_redis, own_postgres, **TRAINING_IN_A_THREAD)
    yield c
    c.close()


def _claim_all(db_url: str, worker: str, ids: list[str], seed: int, out) -> None:
    from app.db import repository as repo
    from app.db.session import session_scope

    random.Random(seed).shuffle(ids)
    won = []
    for job_id in ids:
        with session_scope(db_url) as session:
            if repo.claim(session, job_id, worker, 60) is not None:
                won.append(job_id)
    out.put(won)


def test_500_concurrent_submissions_and_a_claim_race(cluster):
    cluster.start_api()
    distinct = 400

    async def submit_all() -> list[tuple[int, int, str]]:
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(
            base_url=cluster.base,
            limits=limits,
            timeout=60,
            headers={"Authorization": f"Bearer {cluster.key}"},
        ) as c:

            async def one(i: int) -> tuple[int, int, str]:
                key = i % distinct  # keys 0..99 are sent twice
                r = await c.post(
                    "/v1/jobs",
                    json=training_spec(f"load-{key}", epochs=1),
                    headers={"Idempotency-Key": f"k-{key}"},
                )
                return key, r.status_code, r.json().get("id", r.text)

            return await asyncio.gather(*(one(i) for i in range(500)))

    started = time.monotonic()
    results = asyncio.run(submit_all())
    elapsed = time.monotonic() - started
    assert all(status == 201 for _, status, _ in results), [r for r in results if r[1] != 201]
    by_key: dict[int, set[str]] = {}
    for key, _, job_id in results:
        by_key.setdefault(key, set()).add(job_id)
    assert len(by_key) == distinct and all(len(v) == 1 for v in by_key.values())
    with session_scope(cluster.db_url) as s:
        assert s.scalar(select(func.count()).select_from(Job)) == distinct
        ids = list(s.scalars(select(Job.id)))

    # two processes race to claim every job: each job goes to exactly one of them
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_claim_all, args=(cluster.db_url, f"racer-{n}", list(ids), n, out))
        for n in range(2)
    ]
    for p in procs:
        p.start()
    won = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(30)
    assert set(won[0]).isdisjoint(won[1])
    assert set(won[0]) | set(won[1]) == set(ids)
    write_result(
        "submit_500",
        {
            "requests": 500,
            "distinct_keys": distinct,
            "rows": distinct,
            "jobs_lost": 0,
            "requests_per_s": round(500 / elapsed, 1),
            "claim_race_double_claims": 0,
            "claims_split": [len(w) for w in won],
        },
    )


def test_two_workers_never_claim_a_job_twice(cluster):
    cluster.start_api()
    cluster.start_worker()
    cluster.start_worker()
    ids = [cluster.submit(training_spec(f"pair-{i}", epochs=1)) for i in range(10)]
    for job_id in ids:
        assert cluster.wait_status(job_id, ("succeeded", "failed"), 300)["status"] == "succeeded"
    for job_id in ids:
        audit = cluster.audit(job_id)
        claims = [t for t in cluster.transitions(job_id) if t[1] == "running"]
        assert audit["attempts"] == 1 and len(claims) == 1
    write_result("two_workers", {"runs": len(ids), "jobs_lost": 0, "duplicate_runs": 0})


def test_200_sse_watchers_get_the_complete_sequence(cluster):
    cluster.start_api()
    cluster.start_worker()
    job_id = cluster.submit(training_spec("watched", epochs=4))
    watchers = 200

    async def watch(c: httpx.AsyncClient) -> list[int]:
        ids: list[int] = []
        async with c.stream("GET", f"/v1/jobs/{job_id}/events/stream") as r:
            async for line in r.aiter_lines():
                if line.startswith("id: "):
                    ids.append(int(line[4:]))
        return ids

    async def watch_all() -> list[list[int]]:
        limits = httpx.Limits(max_connections=watchers + 10)
        async with httpx.AsyncClient(
            base_url=cluster.base,
            limits=limits,
            timeout=httpx.Timeout(30, read=120),
            headers={"Authorization": f"Bearer {cluster.key}"},
        ) as c:
            return await asyncio.gather(*(watch(c) for _ in range(watchers)))

    seen = asyncio.run(watch_all())
    cluster.wait_status(job_id, ("succeeded",), 60)
    expected = [e[0] for e in cluster.events(job_id)]
    complete = sum(ids == expected for ids in seen)
    assert complete == watchers, f"{complete}/{watchers} complete"
    write_result(
        "sse_200_watchers",
        {"watchers": watchers, "complete": complete, "events_per_watcher": len(expected)},
    )
