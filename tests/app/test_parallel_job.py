"""A data-parallel job through the service: routed to the pool of workers with that
many devices, run by the one claim-and-run path (the training process starts the other
rank), progress reported once."""

from __future__ import annotations

import pytest

from tests.app.conftest import Api, tiny_job
from worker.supervisor import claim_and_run

pytestmark = pytest.mark.integration  # two real training processes


def test_a_two_process_job_runs_and_reports_once(api: Api) -> None:
    api.settings.local_max_gpus = 2  # this executor may start two processes for one job
    spec = tiny_job(
        resources={"gpus": 2},
        training={"epochs": 2, "batch_size": 16, "precision": "fp32", "device": "cpu"},
    )
    job = api.post("/v1/jobs", json=spec).json()
    assert job["queue"] == "kd.x2"
    assert claim_and_run(api.settings, job["id"]) == "succeeded"
    done = api.get(f"/v1/jobs/{job['id']}").json()
    assert done["report"]["processes"] == 2
    events = api.get(f"/v1/jobs/{job['id']}/events", params={"limit": 200}).json()["data"]
    assert [e["data"]["epoch"] for e in events if e["type"] == "epoch"] == [1, 2]
    checkpoints = api.get(f"/v1/jobs/{job['id']}/checkpoints").json()
    assert [c["epoch"] for c in checkpoints] == [1, 2]
