"""Routing and priority: the spec's resources.gpu_type picks the worker pool (Celery
queue), priority orders jobs inside a pool, and queue_position counts within the pool
in the order workers take jobs, on both databases, in single reads and in lists."""

from __future__ import annotations

import secrets

from app.broker import route_for
from app.db import repository as repo
from app.db.session import session_scope
from tests.app.conftest import Api, tiny_job


def test_route_for_maps_the_spec_to_a_queue_and_priority() -> None:
    assert route_for(tiny_job()) == ("kd", 0)
    assert route_for(tiny_job(resources={"gpu_type": "h200"}, priority=7)) == ("kd.h200", 7)
    assert route_for(tiny_job(resources={"gpu_type": "h200", "gpus": 4})) == ("kd.h200.x4", 0)


def test_bad_routing_fields_are_422(api: Api) -> None:
    for spec, loc in [
        (tiny_job(priority=10), "/priority"),
        (tiny_job(resources={"gpu_type": "H200 SXM!"}), "/resources/gpu_type"),
        (tiny_job(resources={"gpus": 0}), "/resources/gpus"),
    ]:
        r = api.post("/v1/jobs", json=spec)
        assert r.status_code == 422 and r.json()["errors"][0]["loc"] == loc, r.text


def test_queue_position_is_per_pool_and_priority_first(any_db_api: Api) -> None:
    api = any_db_api
    # pools of their own: the PostgreSQL database is shared with other tests' jobs
    pool, other = f"t{secrets.token_hex(4)}", f"u{secrets.token_hex(4)}"
    # this deployment serves both pools, and tenants may use priority 5
    api.settings.pools, api.settings.max_priority = f"kd,kd.{pool},kd.{other}", 9
    mine = {"resources": {"gpu_type": pool}}
    old = api.post("/v1/jobs", json=tiny_job(name="old", **mine)).json()
    newer = api.post("/v1/jobs", json=tiny_job(name="newer", **mine)).json()
    urgent = api.post("/v1/jobs", json=tiny_job(name="urgent", priority=5, **mine)).json()
    h200 = api.post("/v1/jobs", json=tiny_job(name="h200", resources={"gpu_type": other})).json()
    assert (old["queue"], old["priority"], old["queue_position"]) == (f"kd.{pool}", 0, 1)
    assert urgent["queue_position"] == 1  # jumps ahead of older, lower-priority jobs
    assert (h200["queue"], h200["queue_position"]) == (f"kd.{other}", 1)  # its own pool
    expected = {old["id"]: 2, newer["id"]: 3, urgent["id"]: 1, h200["id"]: 1}
    single = {i: api.get(f"/v1/jobs/{i}").json()["queue_position"] for i in expected}
    page = api.get("/v1/jobs", params={"limit": 200}).json()["data"]
    listed = {j["id"]: j["queue_position"] for j in page if j["id"] in expected}
    assert single == expected and listed == expected
    # the local executor takes them in the same order
    with session_scope(api.settings.db_url) as session:
        order = repo.queued_job_ids(session, limit=1000)
    assert order.index(urgent["id"]) < order.index(old["id"]) < order.index(newer["id"])
    # once a job leaves the queue, the ones behind it move up
    assert api.post(f"/v1/jobs/{urgent['id']}/cancel").status_code == 202
    assert api.get(f"/v1/jobs/{old['id']}").json()["queue_position"] == 1
    assert api.get(f"/v1/jobs/{urgent['id']}").json()["queue_position"] is None
    for job in (old, newer, h200):  # the PostgreSQL database is shared by later tests
        api.post(f"/v1/jobs/{job['id']}/cancel")
