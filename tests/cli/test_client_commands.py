"""What `kd` prints of a job's end."""

import time

import pytest


def _job(status, transitions, error=None):
    from kdservice.client.models import Job

    return Job.model_validate(
        {
            "id": "job_1",
            "name": "n",
            "kind": "train",
            "status": status,
            "attempt": 1,
            "max_attempts": 3,
            "created_at": "2026-11-29T10:00:00Z",
            "started_at": None,
            "finished_at": None,
            "queue_position": None,
            "progress": {},
            "metrics": {},
            "error": error,
            "status_transitions": [
                {"from_status": None, "to_status": s, "reason": r, "attempt": 1, "at": at}
                for s, r, at in transitions
            ],
            "retry_of": None,
            "resume_checkpoint_id": None,
            "spec": {},
            "report": None,
        }
    )


@pytest.fixture
def in_utc(monkeypatch):
    """Times print in this machine's zone, named; these tests read them in UTC."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_times_print_in_the_machines_zone_with_its_name(monkeypatch):
    from kdservice.cli.render import local_time

    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        assert local_time("2026-11-29T10:00:05.75Z") == "2026-11-29 19:00:05 JST"
    finally:
        monkeypatch.undo()
        time.tzset()


def test_the_end_of_a_job_that_did_not_succeed_says_what_happened(in_utc):
    from kdservice.cli.render import outcome

    cancelled = _job(
        "cancelled",
        [
            ("queued", "submitted", "2026-11-29T10:00:00.1Z"),
            ("running", "claimed", "2026-11-29T10:00:01.5Z"),
            ("cancelling", "cancel requested by the client", "2026-11-29T10:00:04.25Z"),
            ("cancelled", "the run stopped", "2026-11-29T10:00:05.75Z"),
        ],
    )
    assert outcome(cancelled) == (
        "job job_1 was cancelled by request at 2026-11-29 10:00:05 UTC (the run stopped)"
    )
    failed = _job("failed", [("failed", "crashed", "2026-11-29T10:01:00Z")], error="CUDA OOM")
    assert outcome(failed) == "job job_1 failed at 2026-11-29 10:01:00 UTC: CUDA OOM"
    assert outcome(_job("failed", [])) == "job job_1 failed: no reason recorded"
