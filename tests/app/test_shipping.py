"""The path to a model to ship, run for real through the service: measured int8/fp16
exports, the readiness gate (report, webhook payload), sweeps and MLflow tracking."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app.db.models import WebhookDelivery
from app.db.session import session_scope
from tests.app.conftest import build_api, in_process, make_settings, tiny_job
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


def _events(api, job_id) -> list[dict]:
    """Every event of the job, page by page."""
    out, after = [], 0
    while True:
        page = api.get(f"/v1/jobs/{job_id}/events", params={"limit": 200, "after": after}).json()
        out += page["data"]
        if not page["has_more"]:
            return out
        after = page["next_after"]


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


def _sweep_job(teacher_spec, **sweep) -> dict:
    return tiny_job(
        kind="distill",
        teacher=teacher_spec,
        dataset={
            "builtin": "synthetic",
            "num_samples": 300,
            "num_classes": 3,
            "shape": [1, 6, 6],
            "val_fraction": 0.2,
        },
        training={"epochs": 3, "batch_size": 16, "precision": "fp32"},
        sweep=sweep,
    )


def test_a_sweep_with_a_constraint_reports_every_trial_and_ships_the_best(teacher):
    api, teacher_spec = teacher
    spec = _sweep_job(
        teacher_spec,
        parameters={"distillation.temperature": [2, 4], "student.arch": ["mlp_small", "mlp"]},
        constraints={"max_parameters": 5000},  # mlp (hidden 512) is far over
    )
    job = _run(api, spec)
    sweep = job["report"]["sweep"]
    trials = sweep["trials"]
    assert len(trials) == 4
    excluded = [t for t in trials if t["excluded_by"]]
    assert {t["params"]["student.arch"] for t in excluded} == {"mlp"}
    assert all(t["status"] == "excluded" for t in excluded)
    assert sweep["best"] not in {t["trial"] for t in excluded}
    assert set(sweep["pareto"]) <= {t["trial"] for t in trials if not t["excluded_by"]}
    best = trials[sweep["best"]]
    assert job["report"]["student"]["arch"] == "mlp_small"
    assert job["report"]["student"]["accuracy"] == best["accuracy"]
    arts = {a["name"] for a in api.get(f"/v1/jobs/{job['id']}/artifacts").json()}
    assert {"pareto.png", "student.safetensors", "report.json"} <= arts
    events = _events(api, job["id"])
    assert [e["data"]["trial"] for e in events if e["type"] == "trial"] == [0, 1, 2, 3]
    running = {e["data"]["trial"]["index"] for e in events if e["type"] == "epoch"}
    assert running == {t["trial"] for t in trials if not t["excluded_by"]}


def test_halving_through_the_service(teacher):
    api, teacher_spec = teacher
    spec = _sweep_job(
        teacher_spec, parameters={"training.lr": [0.2, 0.1, 0.05]}, strategy="halving"
    )
    sweep = _run(api, spec)["report"]["sweep"]
    assert [(t["rung"], t["epochs"]) for t in sweep["trials"]] == [(0, 1)] * 3 + [(1, 3)]
    assert sweep["best"] == 3


def test_a_sweep_whose_process_is_killed_resumes_at_its_trial(teacher):
    import os
    import signal
    import threading
    import time

    from tests.support.procs import training_children

    api, teacher_spec = teacher
    spec = _sweep_job(teacher_spec, parameters={"training.lr": [0.1, 0.05, 0.02]})
    spec["training"].update(epochs=20, batch_size=8)
    job_id = api.post("/v1/jobs", json=spec).json()["id"]
    result: dict = {}
    in_a_process = in_process(api.settings)  # the test kills it
    thread = threading.Thread(target=lambda: result.update(s=claim_and_run(in_a_process, job_id)))
    thread.start()

    def events():
        return _events(api, job_id)

    def in_trial_1_with_a_checkpoint():
        ticks = [e["data"] for e in events() if e["type"] == "epoch"]
        return any(t["trial"]["index"] == 1 and t["epoch"] >= 2 for t in ticks)

    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not in_trial_1_with_a_checkpoint():
        time.sleep(0.2)
    (child,) = training_children()
    os.kill(child, signal.SIGKILL)
    thread.join(60)
    assert result["s"] == "queued"
    assert claim_and_run(api.settings, job_id) == "succeeded"
    all_events = events()
    attempts = [e["seq"] for e in all_events if e["type"] == "attempt"]
    second = [e for e in all_events if e["seq"] > attempts[1]]
    trained_again = {e["data"]["trial"]["index"] for e in second if e["type"] == "epoch"}
    assert trained_again == {1, 2}  # trial 0 was finished and is not trained again
    first_epoch_of_1 = min(
        e["data"]["epoch"]
        for e in second
        if e["type"] == "epoch" and e["data"]["trial"]["index"] == 1
    )
    assert first_epoch_of_1 >= 2  # trial 1 resumed from its checkpoint, not from epoch 1
    report = api.get(f"/v1/jobs/{job_id}").json()["report"]
    assert [t["trial"] for t in report["sweep"]["trials"]] == [0, 1, 2]
    assert [e["data"]["trial"] for e in all_events if e["type"] == "trial"] == [0, 1, 2]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server (SQLite store, artifacts served by it) on loopback."""
    import subprocess
    import sys
    import time

    import httpx

    from tests.support.procs import free_port

    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    mlflow_cli = str(__import__("pathlib").Path(sys.executable).with_name("mlflow"))
    proc = subprocess.Popen(
        [
            mlflow_cli,
            "server",
            "--backend-store-uri",
            f"sqlite:///{root}/mlflow.db",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=(root / "log").open("wb"),  # noqa: SIM115 (closed with the process)
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    else:
        proc.kill()
        raise RuntimeError("mlflow server did not start: " + (root / "log").read_text()[-2000:])
    yield url
    proc.terminate()
    proc.wait(30)


def test_an_mlflow_run_records_the_job_and_a_job_can_opt_out(tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    gen = build_api(make_settings(tmp_path, mlflow_uri=mlflow_server, mlflow_experiment="kd-test"))
    api = next(gen)
    try:
        job = _run(api, tiny_job(export=["safetensors", "onnx"], webhook_url=HOOK + "?token=s"))
        events = _events(api, job["id"])
        (tracked,) = [e["data"] for e in events if e["type"] == "tracking"]
        assert tracked["mlflow"] == "logged", tracked
        client = MlflowClient(tracking_uri=mlflow_server)
        run = client.get_run(tracked["run_id"])
        assert run.info.status == "FINISHED" and run.data.tags["kdservice.job_id"] == job["id"]
        assert run.data.params["training.epochs"] == "2"
        assert run.data.params["student.arch"] == "mlp_small"
        assert not [k for k in run.data.params if "webhook" in k]  # its token stays private
        curve = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert [m.step for m in curve] == [1, 2]
        assert run.data.metrics["student_accuracy"] == job["report"]["student"]["accuracy"]
        outputs = {a.path for a in client.list_artifacts(run.info.run_id, "outputs")}
        assert {"outputs/student.safetensors", "outputs/student.onnx"} <= outputs
        assert "outputs/events.out.tfevents.kdcore" in outputs

        opted_out = _run(api, tiny_job(name="private", tracking={"mlflow": False}))
        assert not [e for e in _events(api, opted_out["id"]) if e["type"] == "tracking"]
        # each tenant's runs in its own experiment, tagged with the tenant (security round 2)
        tenant_a = api.get("/v1/tenant").json()["id"]
        assert run.data.tags["kdservice.tenant_id"] == tenant_a
        other = api.post("/v1/jobs", json=tiny_job(name="tenant-b-job"), tenant="b")
        assert claim_and_run(api.settings, other.json()["id"]) == "succeeded"
        tenant_b = api.get("/v1/tenant", tenant="b").json()["id"]
        runs_of = {}
        for tenant in (tenant_a, tenant_b):
            experiment = client.get_experiment_by_name(f"kd-test/{tenant}")
            runs_of[tenant] = [
                r.info.run_name for r in client.search_runs([experiment.experiment_id])
            ]
        assert runs_of == {tenant_a: ["tiny"], tenant_b: ["tenant-b-job"]}  # opted-out: absent
        assert client.get_experiment_by_name("kd-test") is None  # no shared experiment
    finally:
        gen.close()


def test_a_tracking_server_that_is_down_costs_the_job_nothing(tmp_path):
    from tests.support.procs import free_port

    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    gen = build_api(make_settings(tmp_path, mlflow_uri=down, mlflow_timeout_s=5))
    api = next(gen)
    try:
        job = _run(api, tiny_job())
        (tracked,) = [e["data"] for e in _events(api, job["id"]) if e["type"] == "tracking"]
        assert tracked["mlflow"] == "failed" and tracked["error"]
        assert job["status"] == "succeeded" and job["report"]["student"]["accuracy"] >= 0
    finally:
        gen.close()


def test_the_tensorboard_events_are_an_artifact_with_the_curves(teacher):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    api, teacher_spec = teacher
    job = _run(api, tiny_job(kind="distill", teacher=teacher_spec))
    arts = {a["name"]: a for a in api.get(f"/v1/jobs/{job['id']}/artifacts").json()}
    blob = api.get(arts["events.out.tfevents.kdcore"]["download_url"]).content
    folder = api.settings.data_dir / "tb-check"
    folder.mkdir()
    (folder / "events.out.tfevents.kdcore").write_bytes(blob)
    events = EventAccumulator(str(folder))
    events.Reload()
    accuracy = [(s.step, s.value) for s in events.Scalars("val/accuracy")]
    history = job["report"]["history"]
    assert accuracy == [(h["epoch"], pytest.approx(h["accuracy"])) for h in history]
    assert {"train/kd", "train/ce", "test/agreement"} <= set(events.Tags()["scalars"])


def test_a_swept_model_over_the_size_limit_is_refused_before_queueing(tmp_path):
    """The base spec fits; one value of the sweep does not (mlp: 0.6 M parameters)."""
    gen = build_api(make_settings(tmp_path, max_model_params=20_000))
    api = next(gen)
    try:
        spec = tiny_job(sweep={"parameters": {"student.arch": ["mlp_small", "mlp"]}})
        response = api.post("/v1/jobs", json=spec)
        assert response.status_code == 422, response.text
        problem = response.json()
        assert any(e["loc"] == "/sweep/parameters" for e in problem["errors"]), problem
        assert "mlp" in response.text and api.get("/v1/jobs").json()["data"] == []
        huge = tiny_job(sweep={"parameters": {"training.batch_size": [32, 10**9]}})
        assert api.post("/v1/jobs", json=huge).status_code == 422
    finally:
        gen.close()


def test_best_epoch_selection_and_early_stopping_through_the_service(teacher):
    api, teacher_spec = teacher
    data = {
        "builtin": "synthetic",
        "num_samples": 200,
        "num_classes": 3,
        "shape": [1, 6, 6],
        "val_fraction": 0.2,
    }
    best = _run(
        api,
        tiny_job(
            kind="distill",
            teacher=teacher_spec,
            dataset=data,
            training={"epochs": 4, "batch_size": 32, "precision": "fp32"},
        ),
    )
    report = best["report"]
    accuracies = [h["accuracy"] for h in report["history"]]
    assert report["selection"] == "best"
    assert report["selected_epoch"] == accuracies.index(max(accuracies)) + 1
    # a learning rate too small to change any prediction: no epoch improves on the first
    stalled = _run(
        api,
        tiny_job(
            kind="distill",
            teacher=teacher_spec,
            dataset=data,
            training={
                "epochs": 10,
                "batch_size": 32,
                "precision": "fp32",
                "lr": 1e-12,
                "early_stopping": {"patience": 2},
            },
        ),
    )
    report = stalled["report"]
    assert report["stopped_early_at_epoch"] == 3 and len(report["history"]) == 3
    assert report["selected_epoch"] == 1
    epochs = [e["data"]["epoch"] for e in _events(api, stalled["id"]) if e["type"] == "epoch"]
    assert epochs == [1, 2, 3]  # the service ran three of the ten epochs
