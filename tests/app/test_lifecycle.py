"""app.services.lifecycle: every path that ends a job ends it once, with one terminal
event and one webhook outbox row (the paths that need a real training run, cancel
while running, max_runtime and retry exhaustion, are in test_runs.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from app.db import repository as repo
from app.db.models import Job, JobStatus, utcnow
from app.db.session import session_scope
from app.services import lifecycle
from tests.app.conftest import Api, build_api, make_settings, tiny_job
from tests.support.audit import assert_ended_once
from worker.maintenance import reap_once
from worker.supervisor import claim_and_run

HOOK = "http://127.0.0.1:9/hook"  # never contacted: the outbox row is what is checked


def _submit(api: Api) -> str:
    return str(api.post("/v1/jobs", json=tiny_job(webhook_url=HOOK)).json()["id"])


def _claim_and_expire(api: Api, job_id: str) -> None:
    with session_scope(api.settings.db_url) as session:
        assert repo.claim(session, job_id, "dead-worker", 30) is not None
        job = session.get(Job, job_id)
        assert job is not None
        job.lease_expires_at = utcnow() - timedelta(seconds=1)


@pytest.mark.integration  # a real training process
def test_a_worker_success_ends_once(api: Api) -> None:
    job_id = _submit(api)
    assert claim_and_run(api.settings, job_id) == "succeeded"
    assert_ended_once(api.settings.db_url, job_id, "succeeded")


def test_a_job_refused_at_claim_ends_once(api: Api) -> None:
    job_id = _submit(api)
    api.settings.max_model_params = 10  # lowered after submission: the worker refuses
    assert claim_and_run(api.settings, job_id) == "failed"
    assert_ended_once(api.settings.db_url, job_id, "failed")


def test_cancel_while_queued_ends_once(api: Api) -> None:
    job_id = _submit(api)
    assert api.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    assert api.post(f"/v1/jobs/{job_id}/cancel").status_code == 409
    assert_ended_once(api.settings.db_url, job_id, "cancelled")


def test_a_cancel_that_races_a_claim_asks_the_running_job_to_stop(api: Api) -> None:
    """The client's cancel read the job queued; a worker claimed it before the cancel
    wrote: the cancel must reach the running job (it used to answer "running" and
    change nothing, so the job ran on to its end)."""
    job_id = _submit(api)
    with session_scope(api.settings.db_url) as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == JobStatus.QUEUED  # the cancel's read
        with session_scope(api.settings.db_url) as worker:  # the claim, committed
            assert repo.claim(worker, job_id, "racing-worker", 30) is not None
        after = lifecycle.cancel(session, job)
        assert after is not None and after.status == JobStatus.CANCELLING
    with session_scope(api.settings.db_url) as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == JobStatus.CANCELLING


def test_the_reaper_ends_a_dead_workers_job_once(tmp_path) -> None:  # type: ignore[no-untyped-def]
    gen = build_api(make_settings(tmp_path, max_attempts=1))
    api = next(gen)
    failed, cancelled = _submit(api), _submit(api)
    _claim_and_expire(api, failed)
    _claim_and_expire(api, cancelled)
    with session_scope(api.settings.db_url) as session:
        job = session.get(Job, cancelled)
        assert job is not None
        job.lease_expires_at = utcnow() + timedelta(seconds=30)
        assert lifecycle.cancel(session, job) is not None  # running -> cancelling
        job.lease_expires_at = utcnow() - timedelta(seconds=1)
    assert sorted(reap_once(api.settings)) == sorted([(failed, "failed"), (cancelled, "cancelled")])
    assert reap_once(api.settings) == []
    assert_ended_once(api.settings.db_url, failed, "failed")
    assert_ended_once(api.settings.db_url, cancelled, "cancelled")
    gen.close()


def test_a_requeued_job_is_published_again_not_ended(api: Api) -> None:
    job_id = _submit(api)
    _claim_and_expire(api, job_id)
    with session_scope(api.settings.db_url) as session:
        after = lifecycle.reap(session, job_id)
    assert after is not None and after.status == JobStatus.QUEUED
    assert after.publish_to == ("kd", 0, 1) and not after.webhook


@pytest.mark.parametrize(
    ("source", "target"),
    [
        (JobStatus.QUEUED, JobStatus.SUCCEEDED),
        (JobStatus.SUCCEEDED, JobStatus.QUEUED),
        (JobStatus.CANCELLED, JobStatus.RUNNING),
        (JobStatus.CANCELLING, JobStatus.QUEUED),
    ],
)
def test_moves_outside_the_lifecycle_are_refused(api: Api, source, target) -> None:  # type: ignore[no-untyped-def]
    job_id = _submit(api)
    with session_scope(api.settings.db_url) as session, pytest.raises(lifecycle.IllegalTransition):
        lifecycle.transition(session, job_id, (source,), target, "test")
