"""app.db.slots: a job on several hosts is claimed all or nothing, on SQLite and on the
real PostgreSQL (the netns tests in tests/faults/test_multi_host.py run it for real)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import delete, select

from app.db import slots
from app.db.models import Job, JobSlot, JobStatus, JobTransition, utcnow
from app.db.session import session_scope
from app.services import lifecycle
from tests.app.conftest import Api, tiny_job
from worker import gang

LEASE = 30.0


@pytest.fixture(autouse=True)
def _no_job_left_queued(request: pytest.FixtureRequest) -> Iterator[None]:
    """The PostgreSQL database is shared by the module's tests and others, which count
    the queue: the jobs made here go when each test ends."""
    yield
    for api, job_id in MADE:
        with session_scope(api.settings.db_url) as s:
            s.execute(delete(Job).where(Job.id == job_id))
    MADE.clear()


MADE: list[tuple[Api, str]] = []


def _job(api: Api) -> str:
    job_id = str(api.post("/v1/jobs", json=tiny_job()).json()["id"])
    MADE.append((api, job_id))
    return job_id


def _offer(api: Api, job_id: str, host: str) -> str | None:
    with session_scope(api.settings.db_url) as s:
        return slots.offer(s, job_id, host, f"worker@{host}", LEASE)


def _place(api: Api, job_id: str, nodes: int) -> int | None:
    with session_scope(api.settings.db_url) as s:
        return slots.place(s, job_id, nodes, "placer", LEASE)


def _rows(api: Api, job_id: str) -> list[tuple[str, int | None, int | None]]:
    with session_scope(api.settings.db_url) as s:
        rows = s.scalars(select(JobSlot).where(JobSlot.job_id == job_id).order_by(JobSlot.host))
        return [(r.host, r.node_rank, r.attempt) for r in rows]


def _job_row(api: Api, job_id: str) -> tuple[str, int]:
    with session_scope(api.settings.db_url) as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job.status, job.attempt


def test_a_gang_is_placed_all_at_once_on_the_oldest_offers(any_db_api: Api) -> None:
    job_id = _job(any_db_api)
    ids = [_offer(any_db_api, job_id, host) for host in ("10.0.0.1", "10.0.0.2", "10.0.0.3")]
    assert all(ids)
    assert _place(any_db_api, job_id, 2) == 1
    assert _rows(any_db_api, job_id) == [
        ("10.0.0.1", 0, 1),
        ("10.0.0.2", 1, 1),
        ("10.0.0.3", None, None),
    ]
    assert _job_row(any_db_api, job_id) == (JobStatus.RUNNING, 1)
    assert _place(any_db_api, job_id, 2) is None  # claimed once: no second gang
    with session_scope(any_db_api.settings.db_url) as s:
        assert slots.withdraw(s, str(ids[2]))  # the third host goes back to other work
        assert not slots.withdraw(s, str(ids[0]))  # a placed host runs: no withdrawal
        claims = s.scalars(select(JobTransition).where(JobTransition.job_id == job_id))
        assert [t.to_status for t in claims] == ["queued", "running"]


def test_too_few_offers_claim_nothing_and_a_withdrawal_holds_nothing(any_db_api: Api) -> None:
    job_id = _job(any_db_api)
    slot_id = _offer(any_db_api, job_id, "10.0.0.1")
    assert slot_id is not None
    assert _place(any_db_api, job_id, 2) is None
    assert _job_row(any_db_api, job_id) == (JobStatus.QUEUED, 0)
    with session_scope(any_db_api.settings.db_url) as s:
        assert slots.waiting(s, slot_id, LEASE) is True  # still unplaced
        assert slots.withdraw(s, slot_id)
        assert slots.waiting(s, slot_id, LEASE) is False  # gone
    assert _rows(any_db_api, job_id) == []


def test_a_host_offers_once_and_an_expired_offer_does_not_count(any_db_api: Api) -> None:
    job_id = _job(any_db_api)
    first = _offer(any_db_api, job_id, "10.0.0.1")
    assert first is not None
    assert _offer(any_db_api, job_id, "10.0.0.1") is None  # one place per host
    with session_scope(any_db_api.settings.db_url) as s:
        row = s.get(JobSlot, first)
        assert row is not None
        row.lease_expires_at = utcnow() - timedelta(seconds=1)  # its worker died
    assert _offer(any_db_api, job_id, "10.0.0.2") is not None  # deletes the dead offer
    assert _rows(any_db_api, job_id) == [("10.0.0.2", None, None)]
    assert _place(any_db_api, job_id, 2) is None
    assert _job_row(any_db_api, job_id) == (JobStatus.QUEUED, 0)


def test_a_running_job_takes_no_offer(any_db_api: Api) -> None:
    job_id = _job(any_db_api)
    for host in ("10.0.0.1", "10.0.0.2"):
        _offer(any_db_api, job_id, host)
    assert _place(any_db_api, job_id, 2) == 1
    assert _offer(any_db_api, job_id, "10.0.0.3") is None


def test_a_member_heartbeat_holds_the_job_until_the_attempt_moves_on(any_db_api: Api) -> None:
    job_id = _job(any_db_api)
    ids = [_offer(any_db_api, job_id, host) for host in ("10.0.0.1", "10.0.0.2")]
    assert _place(any_db_api, job_id, 2) == 1
    with session_scope(any_db_api.settings.db_url) as s:
        member = slots.waiting(s, str(ids[1]), LEASE)
        assert isinstance(member, slots.Member) and member.node_rank == 1
        slots.set_rendezvous(s, str(ids[0]), "10.0.0.1:29400")
        assert slots.rendezvous(s, job_id, 1) == "10.0.0.1:29400"
        status = slots.heartbeat(s, member, job_id, LEASE, {"step": 3}, [("host", {"rate": 1})])
        assert status == JobStatus.RUNNING
        lifecycle.transition(s, job_id, (JobStatus.RUNNING,), JobStatus.QUEUED, "test", attempt=1)
    with session_scope(any_db_api.settings.db_url) as s:
        assert slots.heartbeat(s, member, job_id, LEASE, None, []) is None  # lost
        job = s.get(Job, job_id)
        assert job is not None and job.progress == {"step": 3}


def test_a_worker_without_a_node_address_offers_nothing(api: Api) -> None:
    job_id = _job(api)
    assert api.settings.node_addr == ""
    assert gang.gather(api.settings, job_id, "w", {"resources": {"nodes": 2}}) is None
    assert _rows(api, job_id) == []


def test_a_multi_host_job_is_refused_where_it_cannot_run(api: Api) -> None:
    r = api.post("/v1/jobs", json=tiny_job(resources={"nodes": 2}))
    assert r.status_code == 422, r.text
    assert "/resources/nodes" in r.text and "KD_NODE_ADDR" in r.text  # no broker here
    r = api.post("/v1/jobs", json=tiny_job(resources={"nodes": 65}))
    assert r.status_code == 422 and "nodes" in r.text  # over the cap of 64 hosts


@pytest.mark.parametrize(
    "extra",
    [
        {"sweep": {"parameters": {"training.lr": [0.01, 0.1]}}},
        {"training": {"epochs": 1, "quantization": "int8"}},
    ],
)
def test_what_one_job_on_several_hosts_cannot_do(api: Api, extra: dict) -> None:
    r = api.post("/v1/jobs/validate", json=tiny_job(resources={"nodes": 2}, **extra))
    body = r.json()
    assert r.status_code == 422 or body.get("valid") is False, body
    assert "/resources/nodes" in r.text
