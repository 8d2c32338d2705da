"""Cheap job reads: the ETag (a version bumped by every visible change) and 304s, the
per-process cache of finished jobs (no query, tenant-checked, dropped on delete), the
list built from it, and `poll_after_s`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import event

from app.db import repository as repo
from app.db.models import Job
from app.db.session import get_engine, session_scope
from app.services import lifecycle
from app.services.jobs import delete_job
from tests.app.conftest import build_api, make_settings, tiny_job


@contextmanager
def counted_queries(url: str) -> Iterator[list[str]]:
    statements: list[str] = []

    def count(conn, cursor, statement, *args) -> None:  # type: ignore[no-untyped-def]
        statements.append(statement)

    engine = get_engine(url)
    event.listen(engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", count)


def _finish(api, job_id: str) -> None:
    """queued -> running -> succeeded, as a worker would record it."""
    with session_scope(api.settings.db_url) as session:
        job = repo.claim(session, job_id, "w-1", 30)
        assert job is not None
        assert repo.change_status(
            session, job_id, ("running",), "succeeded", "done", report={"student": {}}
        )


def test_every_visible_change_gets_a_new_etag_and_the_old_one_a_200(any_db_api):
    api = any_db_api
    job_id = api.post("/v1/jobs", json=tiny_job()).json()["id"]
    seen = []

    def read() -> str:
        r = api.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 200 and r.headers["cache-control"] == "private, no-cache"
        seen.append(r.headers["etag"])
        return r.headers["etag"]

    queued = read()
    # unchanged: 304, no body, the same ETag
    again = api.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": queued})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == queued
    assert (
        api.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": '"x", ' + queued}).status_code
        == 304
    )
    with session_scope(api.settings.db_url) as session:
        assert repo.claim(session, job_id, "w-1", 30) is not None
    read()
    with session_scope(api.settings.db_url) as session:  # a heartbeat that stores progress
        repo.heartbeat(session, job_id, "w-1", 1, 30, {"step": 1, "total_steps": 4}, [])
    read()
    with session_scope(api.settings.db_url) as session:  # the lease alone: nothing to see
        repo.heartbeat(session, job_id, "w-1", 1, 30, None, [])
    assert api.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": seen[-1]}).status_code == 304
    with session_scope(api.settings.db_url) as session:
        assert repo.claim(session, job_id, "w-1", 30) is None  # already running: no change
        assert lifecycle.cancel(session, session.get(Job, job_id)) is not None  # cancelling
    read()
    with session_scope(api.settings.db_url) as session:
        assert repo.change_status(session, job_id, ("cancelling",), "cancelled", "stopped")
    last = read()
    assert len(set(seen)) == len(seen) == 5, seen
    # an old ETag gets the current job
    stale = api.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": seen[0]})
    assert stale.status_code == 200 and stale.json()["status"] == "cancelled"
    assert stale.headers["etag"] == last


def test_a_queued_jobs_etag_follows_its_place_in_the_queue(api):
    first = api.post("/v1/jobs", json=tiny_job()).json()["id"]
    second = api.post("/v1/jobs", json=tiny_job()).json()
    assert second["queue_position"] == 2 and second["poll_after_s"] == 5.0
    before = api.get(f"/v1/jobs/{second['id']}").headers["etag"]
    _finish(api, first)
    moved = api.get(f"/v1/jobs/{second['id']}", headers={"If-None-Match": before})
    assert moved.status_code == 200 and moved.json()["queue_position"] == 1
    assert moved.headers["etag"] != before


def test_poll_after_follows_the_status(api):
    job_id = api.post("/v1/jobs", json=tiny_job()).json()["id"]
    assert api.get(f"/v1/jobs/{job_id}").json()["poll_after_s"] == 5.0
    with session_scope(api.settings.db_url) as session:
        repo.claim(session, job_id, "w-1", 30)
    assert api.get(f"/v1/jobs/{job_id}").json()["poll_after_s"] == 2.0
    with session_scope(api.settings.db_url) as session:
        repo.change_status(session, job_id, ("running",), "failed", "boom", error="boom")
    assert api.get(f"/v1/jobs/{job_id}").json()["poll_after_s"] is None


def test_a_finished_job_is_served_from_the_cache_without_a_query(api):
    job_id = api.post("/v1/jobs", json=tiny_job()).json()["id"]
    _finish(api, job_id)
    first = api.get(f"/v1/jobs/{job_id}")  # renders, and keeps it
    assert first.json()["status"] == "succeeded"
    assert api.client.app.state.job_reads.cache.get(job_id) is not None
    with counted_queries(api.settings.db_url) as statements:
        again = api.get(f"/v1/jobs/{job_id}")
        not_modified = api.get(
            f"/v1/jobs/{job_id}", headers={"If-None-Match": first.headers["etag"]}
        )
    assert statements == []
    assert again.content == first.content and again.headers["etag"] == first.headers["etag"]
    assert not_modified.status_code == 304
    # another tenant never gets it from the cache
    assert api.get(f"/v1/jobs/{job_id}", tenant="b").status_code == 404


def test_delete_drops_the_cached_job(api):
    job_id = api.post("/v1/jobs", json=tiny_job()).json()["id"]
    _finish(api, job_id)
    assert api.get(f"/v1/jobs/{job_id}").status_code == 200  # cached now
    assert api.delete(f"/v1/jobs/{job_id}").status_code == 204
    r = api.get(f"/v1/jobs/{job_id}")
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    listed = api.get("/v1/jobs").json()["data"]
    assert job_id not in [j["id"] for j in listed]


def test_a_delete_by_another_process_is_seen_after_the_recheck_time(tmp_path):
    """Another API process deleted it: this one's cached copy is checked in the database
    once it is older than KD_JOB_CACHE_S (0 here: every read)."""
    gen = build_api(make_settings(tmp_path, job_cache_s=0))
    api = next(gen)
    try:
        job_id = api.post("/v1/jobs", json=tiny_job()).json()["id"]
        _finish(api, job_id)
        assert api.get(f"/v1/jobs/{job_id}").status_code == 200
        with counted_queries(api.settings.db_url) as statements:
            assert api.get(f"/v1/jobs/{job_id}").status_code == 200
        assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 1
        with session_scope(api.settings.db_url) as session:  # as the other process does
            tenant_id = session.get(Job, job_id).tenant_id
            delete_job(session, api.settings, tenant_id=tenant_id, job_id=job_id)
        assert api.get(f"/v1/jobs/{job_id}").status_code == 404
        assert api.client.app.state.job_reads.cache.get(job_id) is None
    finally:
        gen.close()


def test_the_list_is_the_same_json_from_the_cache(any_db_api):
    api = any_db_api
    ids = [api.post("/v1/jobs", json=tiny_job(name=f"j{i}")).json()["id"] for i in range(5)]
    for job_id in ids[:3]:
        _finish(api, job_id)
    cold = api.get("/v1/jobs", params={"limit": 4}).json()
    warm = api.get("/v1/jobs", params={"limit": 4}).json()
    assert cold == warm
    assert [j["id"] for j in cold["data"]] == list(reversed(ids))[:4]
    assert cold["has_more"] is True and cold["next_after"] == ids[1]
    for listed in cold["data"]:
        assert listed == api.get(f"/v1/jobs/{listed['id']}").json()
    rest = api.get("/v1/jobs", params={"limit": 4, "after": cold["next_after"]}).json()
    assert [j["id"] for j in rest["data"]] == [ids[0]] and rest["next_after"] is None
    # a job that changes is listed as it is now, not as cached
    with session_scope(api.settings.db_url) as session:
        repo.claim(session, ids[4], "w-1", 30)
    assert api.get("/v1/jobs", params={"limit": 1}).json()["data"][0]["status"] == "running"
    # leave nothing queued or running in the shared PostgreSQL database
    assert api.post(f"/v1/jobs/{ids[3]}/cancel").status_code == 202
    with session_scope(api.settings.db_url) as session:
        assert repo.change_status(session, ids[4], ("running",), "succeeded", "done")


@pytest.mark.parametrize("value", ["x" * 1025])
def test_an_oversized_if_none_match_is_a_problem(api, value):
    job_id = api.post("/v1/jobs", json=tiny_job()).json()["id"]
    r = api.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": value})
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"


def test_the_cache_is_bounded_in_bytes(tmp_path):
    from app.api.job_reads import Rendered, RenderedJobs

    cache = RenderedJobs(max_bytes=1000, recheck_s=5)
    for i in range(10):
        cache.put(Rendered(f"job_{i}", "t", 1, "succeeded", '"e"', b"x" * 300, 0.0))
    assert len(cache) == 3  # 900 bytes; the oldest went first
    assert cache.get("job_9") is not None and cache.get("job_0") is None
    cache.put(Rendered("job_big", "t", 1, "succeeded", '"e"', b"x" * 2000, 0.0))
    assert cache.get("job_big") is None  # larger than the whole cache: not kept
    cache.put(Rendered("job_q", "t", 1, "queued", '"e"', b"x", 0.0))
    assert cache.get("job_q") is None  # only finished jobs never change


def test_a_cursor_of_another_tenant_is_unknown(api):
    theirs = api.post("/v1/jobs", json=tiny_job(), tenant="b").json()["id"]
    api.post("/v1/jobs", json=tiny_job())
    r = api.get("/v1/jobs", params={"after": theirs})
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    # a known cursor at the end of the list is an empty page, not a 404
    (only,) = api.get("/v1/jobs").json()["data"]
    assert api.get("/v1/jobs", params={"after": only["id"]}).json() == {
        "data": [],
        "has_more": False,
        "next_after": None,
    }


def test_a_current_etag_of_a_running_job_is_answered_without_rendering(api, monkeypatch):
    from app.api import job_reads

    job_id = api.post("/v1/jobs", json=tiny_job()).json()["id"]
    with session_scope(api.settings.db_url) as session:
        repo.claim(session, job_id, "w-1", 30)
    etag = api.get(f"/v1/jobs/{job_id}").headers["etag"]

    def no_rendering(view):  # type: ignore[no-untyped-def]
        raise AssertionError("a 304 must not render the job")

    monkeypatch.setattr(job_reads, "_render", no_rendering)
    for sent in (etag, f"W/{etag}", f'"stale", {etag}', "*"):
        r = api.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": sent})
        assert r.status_code == 304 and r.content == b"" and r.headers["etag"] == etag, sent
    monkeypatch.undo()
    for sent in ('"stale"', "garbage without quotes", ",,,", etag.strip('"')):
        r = api.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": sent})
        assert r.status_code == 200 and r.json()["id"] == job_id, sent
    with session_scope(api.settings.db_url) as session:  # nothing left running
        assert repo.change_status(session, job_id, ("running",), "failed", "done")
