"""The path to a model to ship, run for real through the service: measured int8/fp16
exports, the readiness gate (report, webhook payload), sweeps and MLflow tracking."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app.db.models import WebhookDelivery
from app.db.session import session_scope
from tests.app.conftest import build_api, make_settings, tiny_job
from worker.supervisor import claim_and_run

pytestmark = pytest.mark.integration  # real training processes

HOOK = "http://127.0.0.1:9/hook"  # never contacted: the outbox row is what is checked


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A trained teacher (a train job's student) and the API that holds it."""
    gen = build_api(make_settings(tmp_path_factory.mktemp("ship")))
    api = next(gen)
    job = api.post("/v1/jobs", json=tiny_job(training={"epochs": 4, "precision": "fp32"}))
    assert claim_and_run(api.settings, job.json()["id"]) == "succeeded"
    arts = {a["name"]: a for a in api.get(f"/v1/jobs/{job.json()['id']}/artifacts").json()}
    yield api, {"arch": "mlp_small", "checkpoint": arts["student.safetensors"]["id"]}
    gen.close()


def _run(api, spec) -> dict:
    job = api.post("/v1/jobs", json=spec)
    assert job.status_code == 201, job.text
    assert claim_and_run(api.settings, job.json()["id"]) == "succeeded"
    return api.get(f"/v1/jobs/{job.json()['id']}").json()


def _outbox_payload(api, job_id) -> dict:
    with session_scope(api.settings.db_url) as session:
        row = session.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)).one()
        return row.payload


def test_int8_and_fp16_exports_are_written_and_measured(teacher):
    api, teacher_spec = teacher
    job = _run(
        api,
        tiny_job(kind="distill", teacher=teacher_spec, export=["onnx_fp16", "onnx_int8"]),
    )
    report = job["report"]
    exports = report["exports"]
    assert set(exports) == {"onnx", "onnx_fp16", "onnx_int8"}  # fp32 ONNX is their source
    arts = {a["name"]: a for a in api.get(f"/v1/jobs/{job['id']}/artifacts").json()}
    for fmt, name in [("onnx_fp16", "student.fp16.onnx"), ("onnx_int8", "student.int8.onnx")]:
        assert exports[fmt]["bytes"] == arts[name]["bytes"] > 0
        assert exports[fmt]["latency_ms_batch1"] > 0 and exports[fmt]["latency_ms_batch64"] > 0
        # a lossy export stays close to the student it came from (3 classes, 40 tests)
        assert abs(exports[fmt]["accuracy"] - report["student"]["accuracy"]) <= 0.15
    assert exports["onnx"]["accuracy"] == pytest.approx(report["student"]["accuracy"])
    assert exports["onnx_int8"]["bytes"] < exports["onnx"]["bytes"]
    assert exports["onnx_fp16"]["bytes"] < exports["onnx"]["bytes"]


def test_a_gate_that_passes_and_one_that_fails_reach_report_and_webhook(teacher):
    api, teacher_spec = teacher
    lenient = {"max_accuracy_drop": 1.0, "max_class_drop": 1.0, "min_agreement": 0.0}
    passed = _run(api, tiny_job(kind="distill", teacher=teacher_spec, gate=lenient))
    gate = passed["report"]["gate"]
    assert gate["passed"] is True
    assert set(gate["checks"]) == {"accuracy_drop", "class_drop", "agreement"}
    ready = passed["report"]["readiness"]
    assert len(ready["per_class"]) == 3 and 0 <= ready["ece"]["student"] <= 1
    assert gate["checks"]["agreement"]["value"] == passed["report"]["agreement"]

    strict = {"max_latency_ms_batch1": 1e-9, "min_agreement": 0.0}  # no model runs in 1 ps
    failed = _run(
        api, tiny_job(kind="distill", teacher=teacher_spec, gate=strict, webhook_url=HOOK)
    )
    assert failed["status"] == "succeeded"  # a failed gate is a verdict, not a failure
    gate = failed["report"]["gate"]
    assert gate["passed"] is False
    assert gate["checks"]["latency_ms_batch1"]["passed"] is False
    assert gate["checks"]["agreement"]["passed"] is True
    assert _outbox_payload(api, failed["id"])["job"]["gate"] == gate


def test_a_gate_on_teacher_checks_is_refused_for_a_train_job(teacher):
    api, _ = teacher
    response = api.post("/v1/jobs", json=tiny_job(gate={"min_agreement": 0.9}))
    assert response.status_code == 422
    assert "classification distillation" in response.text
