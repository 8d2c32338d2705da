"""Teacher preflight through the service: a `train` job's teacher, named by its artifact
id, is used at its own image size and statistics with no preprocessing fields; fed the
wrong normalisation it fails the job before training, saying why."""

from __future__ import annotations

import pytest

from tests.app.conftest import build_api, make_settings
from worker.supervisor import claim_and_run

pytestmark = pytest.mark.integration  # real training processes


def _run(api, spec: dict) -> dict:
    created = api.post("/v1/jobs", json=spec)
    assert created.status_code == 201, created.text
    claim_and_run(api.settings, created.json()["id"])
    return api.get(f"/v1/jobs/{created.json()['id']}").json()


def test_a_train_jobs_teacher_needs_no_preprocessing_fields(tmp_path):
    gen = build_api(make_settings(tmp_path))
    api = next(gen)
    try:
        digits = {"builtin": "digits", "max_samples": 600}
        teacher = _run(
            api,
            {
                "name": "teacher-16px",
                "kind": "train",
                "student": {"arch": "small_cnn"},
                "dataset": {**digits, "image_size": 16},
                "training": {"epochs": 4, "lr": 0.05, "batch_size": 32, "precision": "fp32"},
            },
        )
        assert teacher["status"] == "succeeded", teacher["error"]
        artifacts = api.get(f"/v1/jobs/{teacher['id']}/artifacts").json()
        weights = next(a["id"] for a in artifacts if a["name"] == "student.safetensors")
        spec = {
            "name": "distill",
            "kind": "distill",
            "teacher": {"arch": "small_cnn", "checkpoint": weights},
            "student": {"arch": "mlp_small"},
            "dataset": digits,  # no image_size, no statistics: the teacher's are taken
            "distillation": {"method": "kd"},
            "training": {"epochs": 1, "batch_size": 32, "precision": "fp32"},
        }
        # validation says what the job will feed the teacher, and what it cannot fix
        said = api.post("/v1/jobs/validate", json=spec).json()
        assert said["valid"] is True
        assert any("student.json records" in w and "16x16" in w for w in said["warnings"])
        small = api.post(
            "/v1/jobs/validate", json={**spec, "dataset": {**digits, "image_size": 8}}
        ).json()
        assert any("image_size 8 differs from the 16 px" in w for w in small["warnings"])
        colour = {"name": "synthetic", "shape": [3, 16, 16], "num_classes": 10}
        refused = api.post("/v1/jobs/validate", json={**spec, "dataset": colour}).json()
        assert refused["valid"] is False
        assert any(
            e["loc"] == "/dataset" and "cannot change the channels" in e["msg"]
            for e in refused["errors"]
        ), refused
        job = _run(api, spec)
        assert job["status"] == "succeeded", job["error"]
        preflight = job["report"]["teacher_preflight"]
        assert preflight["inherited"]["image_size"] == 16 and preflight["passed"] is True
        assert preflight["accuracy"] > 0.5
        # validation scores the teacher too, where it is cheap (a built-in set)
        assert not [w for w in said["warnings"] if w.startswith("scored now")]
        bad = {**spec, "dataset": {**digits, "mean": [0.9], "std": [0.01]}}
        flagged = api.post("/v1/jobs/validate", json=bad).json()
        assert flagged["valid"] is True  # a warning: the job itself fails at its start
        scored = [w for w in flagged["warnings"] if w.startswith("scored now")]
        assert len(scored) == 1 and "near chance" in scored[0], flagged
        assert "dataset.mean/std" in scored[0]
        wrong = _run(api, bad)
        assert wrong["status"] == "failed"
        assert "near chance" in wrong["error"] and "dataset.mean/std" in wrong["error"]
        events = api.get(f"/v1/jobs/{wrong['id']}/events", params={"limit": 200}).json()
        assert not [e for e in events["data"] if e["type"] == "epoch"]  # failed before
    finally:
        gen.close()
