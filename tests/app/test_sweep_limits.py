"""Security round 2: a sweep's whole budget is capped, a submission spends bounded time
sizing it (the worker sizes every trial before it starts), and every job has a runtime
limit even when its spec sets none."""

from __future__ import annotations

import pytest

from tests.app.conftest import build_api, make_settings
from tests.support.specs import tiny_job
from worker.supervisor import Supervisor, claim_and_run

pytestmark = pytest.mark.integration  # the worker's checks, through the claim path


def sweep_job(epochs: int, **sweep) -> dict:
    return tiny_job(training={"epochs": epochs, "batch_size": 32, "precision": "fp32"}, sweep=sweep)


def test_a_sweep_over_the_trial_epoch_budget_is_refused(tmp_path):
    """64 trials of 10,000 epochs were valid before."""
    gen = build_api(make_settings(tmp_path))
    api = next(gen)
    try:
        grid = {
            "training.lr": [0.001 * (i + 1) for i in range(8)],
            "training.momentum": [0.1 * i for i in range(8)],
        }  # 8 x 8 = 64 trials
        r = api.post("/v1/jobs", json=sweep_job(10_000, parameters=grid, max_trials=64))
        assert r.status_code == 422, r.text
        (error,) = r.json()["errors"]
        assert error["loc"] == "/sweep" and "640,000 trial-epochs" in error["msg"], error
        small = api.post("/v1/jobs/validate", json=sweep_job(10, parameters=grid, max_trials=64))
        assert small.json()["valid"] is True, small.text  # 640 trial-epochs: within budget
    finally:
        gen.close()


def test_sizing_a_sweep_at_submission_is_bounded_and_the_worker_sizes_the_rest(tmp_path):
    """With no time to size the trials at submission, validation says so, and the trial
    over the activation limit (a batch of 65,536) stops the job before it trains."""
    settings = make_settings(tmp_path, sweep_sizing_s=1e-9, max_activation_bytes=16 * 1024**2)
    gen = build_api(settings)
    api = next(gen)
    try:
        spec = sweep_job(1, parameters={"training.batch_size": [32, 64, 65_536]})
        checked = api.post("/v1/jobs/validate", json=spec).json()
        assert checked["valid"] is True, checked
        (warning,) = [w for w in checked["warnings"] if "distinct trial sizes" in w]
        assert warning.startswith("0 of the sweep's 3 distinct trial sizes"), warning
        job = api.post("/v1/jobs", json=spec)
        assert job.status_code == 201, job.text
        assert claim_and_run(api.settings, job.json()["id"]) == "failed"
        ended = api.get(f"/v1/jobs/{job.json()['id']}").json()
        assert "65536" in str(ended["error"]) and "activations" in str(ended["error"]), ended
    finally:
        gen.close()


def test_a_job_without_max_runtime_s_gets_the_services_default(tmp_path):
    settings = make_settings(tmp_path, default_max_runtime_s=3600)
    spec = sweep_job(1, parameters={"training.lr": [0.01]})
    assert Supervisor(settings, "job_x", "w", 1, spec, None).max_runtime_s == 3600
    own = {**spec, "max_runtime_s": 60}
    assert Supervisor(settings, "job_x", "w", 1, own, None).max_runtime_s == 60
