"""Jobs run for real: the claim-and-run path starts the training child process, which
runs kdcore; the tests read the results back through the API."""

import hashlib
import json
import os
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from safetensors.torch import load

from app.db import repository as repo
from app.db.models import Job, utcnow
from app.db.session import session_scope
from app.services import lifecycle
from app.settings import Settings
from tests.app.conftest import build_api, in_process, make_settings, tiny_job
from tests.support.audit import assert_ended_once
from tests.support.procs import training_children
from worker.maintenance import reap_once
from worker.supervisor import claim_and_run, teacher_cache, threads_per_job

pytestmark = pytest.mark.integration  # real training processes

HOOK = "http://127.0.0.1:9/hook"  # never contacted: these tests check the outbox row


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One job run to completion, shared by the read-only tests below."""
    # two executor slots: each job gets half the cores (threads_per_job)
    # in a process: the report's thread count is the process's share of the cores
    settings = in_process(make_settings(tmp_path_factory.mktemp("run"), local_workers=2))
    gen = build_api(settings)
    api = next(gen)
    job = api.post("/v1/jobs", json=tiny_job(export=["safetensors", "onnx"])).json()
    assert claim_and_run(settings, job["id"]) == "succeeded"
    yield api, job["id"]
    gen.close()


def test_run_records_status_progress_report_and_contiguous_events(finished):
    api, job_id = finished
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["attempt"] == 1
    assert [t["to_status"] for t in job["status_transitions"]] == ["queued", "running", "succeeded"]
    assert job["progress"]["fraction"] == 1.0 and job["progress"]["epochs"] == 2
    assert 0 <= job["metrics"]["accuracy"] <= 1
    assert job["report"]["student"]["arch"] == "mlp_small"
    cores = len(os.sched_getaffinity(0))
    assert job["report"]["threads"] == threads_per_job(api.settings) == max(1, cores // 2)
    events = api.get(f"/v1/jobs/{job_id}/events", params={"limit": 200}).json()["data"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    types = [e["type"] for e in events]
    assert types[0] == "status" and types[-1] == "status" and types.count("epoch") == 2
    metrics = api.get(f"/v1/jobs/{job_id}/metrics").json()["points"]
    assert [p["epoch"] for p in metrics if p["type"] == "epoch"] == [1, 2]
    checkpoints = api.get(f"/v1/jobs/{job_id}/checkpoints").json()
    assert [c["epoch"] for c in checkpoints] == [1, 2] and checkpoints[0]["bytes"] > 0


def test_artifact_download_etag_range_and_conditional(finished):
    api, job_id = finished
    arts = {a["name"]: a for a in api.get(f"/v1/jobs/{job_id}/artifacts").json()}
    assert {"student.safetensors", "student.json", "student.onnx", "report.json"} <= set(arts)
    art = arts["student.safetensors"]
    url = art["download_url"]
    full = api.get(url)
    assert full.status_code == 200
    assert hashlib.sha256(full.content).hexdigest() == art["sha256"]
    assert full.headers["etag"] == f'"{art["sha256"]}"'
    assert full.headers["content-length"] == str(art["bytes"])
    assert full.headers["x-checksum-sha256"] == art["sha256"]
    state = load(full.content)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    head = api.head(url)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(art["bytes"])
    part = api.get(url, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == full.content[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{art['bytes']}"
    tail = api.get(url, headers={"Range": "bytes=-5"})
    assert tail.status_code == 206 and tail.content == full.content[-5:]
    assert api.get(url, headers={"Range": f"bytes={art['bytes']}-"}).status_code == 416
    assert api.get(url, headers={"If-None-Match": full.headers["etag"]}).status_code == 304
    stale = api.get(url, headers={"Range": "bytes=0-3", "If-Range": '"other"'})
    assert stale.status_code == 200 and len(stale.content) == art["bytes"]
    assert api.get(url, tenant="b").status_code == 404
    assert api.get("/v1/artifacts/..%2F..%2Fetc%2Fpasswd/content").status_code == 404


def _sse(api, job_id, last_event_id=None):
    headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
    with api.client.stream(
        "GET", f"/v1/jobs/{job_id}/events/stream", headers={**api.a, **headers}
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        text = "".join(r.iter_text())
    return [int(line[4:]) for line in text.splitlines() if line.startswith("id: ")]


def test_sse_replays_everything_and_resumes_from_last_event_id(finished):
    api, job_id = finished
    total = len(api.get(f"/v1/jobs/{job_id}/events", params={"limit": 200}).json()["data"])
    assert _sse(api, job_id) == list(range(1, total + 1))
    assert _sse(api, job_id, last_event_id=3) == list(range(4, total + 1))
    assert _sse(api, job_id, last_event_id=total) == []


def test_a_train_jobs_artifact_is_a_distill_teacher_and_retry_resumes(finished):
    api, job_id = finished
    arts = {a["name"]: a for a in api.get(f"/v1/jobs/{job_id}/artifacts").json()}
    spec = tiny_job(
        kind="distill",
        teacher={"arch": "mlp_small", "checkpoint": arts["student.safetensors"]["id"]},
    )
    job = api.post("/v1/jobs", json=spec)
    assert job.status_code == 201, job.text
    assert claim_and_run(api.settings, job.json()["id"]) == "succeeded"
    done = api.get(f"/v1/jobs/{job.json()['id']}").json()
    assert done["report"]["teacher"]["accuracy"] == pytest.approx(
        api.get(f"/v1/jobs/{job_id}").json()["report"]["student"]["accuracy"]
    )
    # retry from the last checkpoint: the new job starts where the old one ended
    retry = api.post(f"/v1/jobs/{job_id}/retry", params={"from_checkpoint": True}).json()
    assert retry["resume_checkpoint_id"]
    assert claim_and_run(api.settings, retry["id"]) == "succeeded"
    events = api.get(f"/v1/jobs/{retry['id']}/events").json()["data"]
    attempt = next(e for e in events if e["type"] == "attempt")
    assert (
        attempt["data"]["resume_from_step"]
        == api.get(f"/v1/jobs/{job_id}").json()["progress"]["step"]
    )
    assert not [e for e in events if e["type"] == "epoch"]  # nothing left to train


def test_a_job_with_several_teachers_runs_in_the_service(finished):
    """Each teacher's artifact id is resolved to a local path in the worker."""
    api, job_id = finished
    arts = {a["name"]: a for a in api.get(f"/v1/jobs/{job_id}/artifacts").json()}
    weights = arts["student.safetensors"]["id"]
    spec = tiny_job(
        kind="distill",
        teachers=[
            {"arch": "mlp_small", "checkpoint": weights, "weight": 3},
            {"arch": "mlp_small", "checkpoint": weights},
        ],
        distillation={"method": "dist"},
    )
    job = api.post("/v1/jobs", json=spec)
    assert job.status_code == 201, job.text
    assert claim_and_run(api.settings, job.json()["id"]) == "succeeded"
    report = api.get(f"/v1/jobs/{job.json()['id']}").json()["report"]
    first = api.get(f"/v1/jobs/{job_id}").json()["report"]["student"]["accuracy"]
    assert [t["weight"] for t in report["teachers"]] == [3, 1]
    assert all(t["accuracy"] == pytest.approx(first) for t in report["teachers"])
    assert report["teacher"]["arch"] == "mlp_small + mlp_small"


def test_a_second_claim_of_the_same_job_returns_at_once(api):
    job = api.post("/v1/jobs", json=tiny_job()).json()
    with session_scope(api.settings.db_url) as session:
        assert repo.claim(session, job["id"], "w1", 30) is not None
    with session_scope(api.settings.db_url) as session:
        assert repo.claim(session, job["id"], "w2", 30) is None
    assert claim_and_run(api.settings, job["id"]) is None
    # even once its lease has expired: the reaper requeues it before anyone claims it
    with session_scope(api.settings.db_url) as session:
        session.get(Job, job["id"]).lease_expires_at = utcnow() - timedelta(seconds=1)
    with session_scope(api.settings.db_url) as session:
        assert repo.claim(session, job["id"], "w3", 30) is None


def test_reaper_requeues_expired_leases_then_fails_after_max_attempts(tmp_path):
    gen = build_api(make_settings(tmp_path, max_attempts=2))
    api = next(gen)
    job_id = api.post("/v1/jobs", json=tiny_job()).json()["id"]
    for attempt in (1, 2):
        with session_scope(api.settings.db_url) as session:
            assert repo.claim(session, job_id, f"dead-worker-{attempt}", 30).attempt == attempt
            session.get(Job, job_id).lease_expires_at = utcnow() - timedelta(seconds=1)
        expected = "queued" if attempt == 1 else "failed"
        assert reap_once(api.settings) == [(job_id, expected)]
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert (
        job["status"] == "failed" and "no attempts left" in job["status_transitions"][-1]["reason"]
    )
    assert reap_once(api.settings) == []
    gen.close()


def test_cancel_while_running_stops_the_training_process(api):
    spec = tiny_job(
        training={"epochs": 200, "batch_size": 8, "precision": "fp32"}, webhook_url=HOOK
    )
    job_id = api.post("/v1/jobs", json=spec).json()["id"]
    result = {}
    thread = threading.Thread(
        target=lambda: result.update(status=claim_and_run(in_process(api.settings), job_id))
    )
    thread.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if api.get(f"/v1/jobs/{job_id}").json()["progress"].get("step"):
            break
        time.sleep(0.2)
    assert api.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelling"
    thread.join(60)
    assert result["status"] == "cancelled"
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "cancelled"
    assert [t["to_status"] for t in job["status_transitions"]][-2:] == ["cancelling", "cancelled"]
    assert job["progress"]["step"] < job["progress"]["total_steps"]
    assert_ended_once(api.settings.db_url, job_id, "cancelled")


def test_a_job_whose_training_crashes_is_retried_then_failed(tmp_path):
    gen = build_api(make_settings(tmp_path, max_attempts=2))
    api = next(gen)
    # lr so high that the loss overflows: a crash of the run, not a bad spec
    spec = tiny_job(
        training={"epochs": 3, "lr": 100.0, "precision": "fp32", "momentum": 0.99},
        webhook_url=HOOK,
    )
    job_id = api.post("/v1/jobs", json=spec).json()["id"]
    assert claim_and_run(api.settings, job_id) == "queued"
    assert claim_and_run(api.settings, job_id) == "failed"
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["attempt"] == 2 and "FloatingPointError" in job["error"]
    assert_ended_once(api.settings.db_url, job_id, "failed")  # retries exhausted
    gen.close()


def test_report_json_artifact_matches_the_job_report(finished):
    api, job_id = finished
    arts = {a["name"]: a for a in api.get(f"/v1/jobs/{job_id}/artifacts").json()}
    report = json.loads(api.get(arts["report.json"]["download_url"]).content)
    assert report == api.get(f"/v1/jobs/{job_id}").json()["report"]


def test_a_killed_training_process_is_retried_from_its_last_checkpoint(api):
    import os
    import signal

    spec = tiny_job(
        training={"epochs": 30, "batch_size": 8, "precision": "fp32"},
        dataset={"builtin": "synthetic", "num_samples": 400, "num_classes": 3, "shape": [1, 6, 6]},
    )
    job_id = api.post("/v1/jobs", json=spec).json()["id"]
    result = {}
    thread = threading.Thread(
        target=lambda: result.update(status=claim_and_run(in_process(api.settings), job_id))
    )
    thread.start()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not api.get(f"/v1/jobs/{job_id}/checkpoints").json():
        time.sleep(0.1)
    checkpoint = api.get(f"/v1/jobs/{job_id}/checkpoints").json()[-1]
    (child,) = training_children()
    os.kill(child, signal.SIGKILL)
    thread.join(30)
    assert result["status"] == "queued"
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert "killed by signal 9" in job["status_transitions"][-1]["reason"]
    assert claim_and_run(in_process(api.settings), job_id) == "succeeded"
    events = api.get(f"/v1/jobs/{job_id}/events", params={"limit": 200}).json()["data"]
    attempts = [e["data"] for e in events if e["type"] == "attempt"]
    assert [a["attempt"] for a in attempts] == [1, 2]
    assert attempts[1]["resume_from_step"] >= checkpoint["step"] > 0
    epochs = [e["data"]["epoch"] for e in events if e["type"] == "epoch"]
    # it did not start over: epoch 1 ran once, at most the interrupted epoch ran twice
    assert epochs[-1] == 30 and epochs.count(1) == 1 and len(epochs) <= 31
    assert training_children() == []


def test_a_job_over_its_max_runtime_is_stopped_and_failed(api):
    # the budget counts from the training process's start (interpreter and torch
    # included), so on a slow machine the run may be stopped before its first step:
    # what is checked is that it was stopped, failed once and left no process
    spec = tiny_job(
        max_runtime_s=8,
        training={"epochs": 5000, "batch_size": 8, "precision": "fp32"},
        webhook_url=HOOK,
    )
    job_id = api.post("/v1/jobs", json=spec).json()["id"]
    assert claim_and_run(in_process(api.settings), job_id) == "failed"
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["error"] == "exceeded max_runtime_s (8 s)" and job["attempt"] == 1
    progress = job["progress"]  # its step is null when it was stopped before the first
    assert progress["step"] is None or progress["step"] < progress["total_steps"]
    assert training_children() == []
    assert_ended_once(api.settings.db_url, job_id, "failed")


def test_a_cancel_that_arrives_while_finalizing_wins_once(api):
    """The run finished, but the client cancelled before the result was recorded."""
    from worker.supervisor import Supervisor

    job_id = api.post("/v1/jobs", json=tiny_job(webhook_url=HOOK)).json()["id"]
    with session_scope(api.settings.db_url) as session:
        job = repo.claim(session, job_id, "w-final", 30)
        assert lifecycle.cancel(session, job) is not None  # running -> cancelling
    sup = Supervisor(api.settings, job_id, "w-final", job.attempt, job.spec, None)
    with session_scope(api.settings.db_url) as session:
        status, after = sup._record_end(session, {"type": "done", "report": {}})
    assert status == "cancelled" and after is not None and after.webhook
    assert_ended_once(api.settings.db_url, job_id, "cancelled")
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "cancelled" and job["report"] is None
    to = [t["to_status"] for t in job["status_transitions"]]
    assert to.count("cancelled") == 1
    assert api.post(f"/v1/jobs/{job_id}/cancel").status_code == 409


def test_each_job_gets_its_share_of_the_cores(tmp_path):
    cores = len(os.sched_getaffinity(0))
    assert threads_per_job(make_settings(tmp_path)) == cores  # one slot: every core
    assert threads_per_job(make_settings(tmp_path, local_workers=4)) == max(1, cores // 4)
    assert threads_per_job(make_settings(tmp_path, local_workers=0)) == cores
    assert threads_per_job(make_settings(tmp_path, job_threads=3)) == 3  # the operator's say
    celery = Settings(data_dir=tmp_path, broker_url="redis://127.0.0.1:6379/0", local_workers=8)
    assert threads_per_job(celery) == cores  # a Celery worker runs one job at a time


def test_a_tenants_later_job_reads_its_own_teacher_cache_only(api):
    """Two identical distillations with crops by tenant a: the second skips the teacher.
    The same spec by tenant b computes its own: tenants share no cache folder."""
    spec = tiny_job(
        kind="distill",
        teacher={"arch": "small_cnn"},  # the same seeded weights for every job
        augment={"crop_padding": 1, "hflip": True},
    )

    def run(tenant: str) -> dict:
        job = api.post("/v1/jobs", json=spec, tenant=tenant).json()
        assert claim_and_run(api.settings, job["id"]) == "succeeded"
        return api.get(f"/v1/jobs/{job['id']}", tenant=tenant).json()["report"]

    first, second, other = run("a"), run("a"), run("b")
    steps = first["steps"]
    assert first["teacher_store"]["computed"] == steps
    assert first["teacher_store"]["written"] == ["epoch0001", "epoch0002"]
    assert second["teacher_store"]["from_disk"] == steps
    assert second["teacher_store"]["computed"] == 0
    assert other["teacher_store"]["key"] == first["teacher_store"]["key"]
    assert other["teacher_store"]["from_disk"] == 0  # b never reads a's folder
    tenants = sorted(p for p in api.settings.teacher_cache_dir.iterdir())
    assert len(tenants) == 2
    assert all((t / first["teacher_store"]["key"]).is_dir() for t in tenants)


def test_the_teacher_cache_can_be_turned_off(tmp_path):
    gen = build_api(make_settings(tmp_path, teacher_cache_bytes=0))
    api = next(gen)
    spec = tiny_job(kind="distill", teacher={"arch": "small_cnn"}, augment={"crop_padding": 1})
    job = api.post("/v1/jobs", json=spec).json()
    assert claim_and_run(api.settings, job["id"]) == "succeeded"
    assert api.get(f"/v1/jobs/{job['id']}").json()["report"]["teacher_store"] is None
    assert not api.settings.teacher_cache_dir.exists()
    gen.close()


def test_starting_a_job_trims_the_teacher_cache_to_its_bound(tmp_path):
    settings = make_settings(tmp_path, teacher_cache_bytes=1500)
    for tenant, key, age in (("t1", "old", 300), ("t2", "new", 100)):
        folder = settings.teacher_cache_dir / tenant / key
        folder.mkdir(parents=True)
        (folder / "full.values.npy").write_bytes(b"x" * 1000)
        os.utime(folder, (time.time() - age, time.time() - age))
    assert teacher_cache(settings, "t3") == settings.teacher_cache_dir / "t3"
    assert not (settings.teacher_cache_dir / "t1" / "old").exists()  # least recently used
    assert (settings.teacher_cache_dir / "t2" / "new").exists()
    assert teacher_cache(make_settings(tmp_path, teacher_cache_bytes=0), "t3") is None


def test_a_second_attempt_waits_until_the_first_attempts_process_has_left_the_folder(api):
    """Under load a lease can expire while its training process still runs: the reaper
    requeues the job and another slot claims it. Its attempt must not start a second
    writer in the job's folder (two once raced over curves.tmp.png) until the first
    supervisor has noticed, at its next heartbeat, and its process is gone."""
    # one long epoch: the first supervisor flushes at its heartbeat only (an epoch's
    # end would flush at once), and its heartbeats stall (every 6 s instead of 0.3)
    spec = tiny_job(
        training={"epochs": 1, "batch_size": 4, "precision": "fp32"},
        dataset={
            "builtin": "synthetic",
            "num_samples": 150_000,
            "num_classes": 3,
            "shape": [1, 6, 6],
        },
    )
    job_id = api.post("/v1/jobs", json=spec).json()["id"]
    stalled = in_process(api.settings).model_copy(update={"heartbeat_s": 6.0})
    first: dict = {}
    a = threading.Thread(target=lambda: first.update(status=claim_and_run(stalled, job_id)))
    a.start()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not api.get(f"/v1/jobs/{job_id}").json()["progress"].get(
        "step"
    ):
        time.sleep(0.1)
    (child,) = training_children()
    with session_scope(api.settings.db_url) as session:  # as if its heartbeats stalled
        session.get(Job, job_id).lease_expires_at = utcnow() - timedelta(seconds=1)
    assert reap_once(api.settings) == [(job_id, "queued")]
    second: dict = {}
    b = threading.Thread(
        target=lambda: second.update(status=claim_and_run(in_process(api.settings), job_id))
    )
    b.start()
    log2 = api.settings.jobs_dir / job_id / "attempt2.log"
    overlapped = False
    while a.is_alive() or not log2.exists():
        if log2.exists() and os.path.exists(f"/proc/{child}"):
            stat = Path(f"/proc/{child}/stat").read_text()
            state = stat.rsplit(")", 1)[1].split()[0]
            overlapped = overlapped or state != "Z"  # a zombie has left the folder
        time.sleep(0.02)
        assert time.monotonic() < deadline + 60, "the second attempt never started"
    assert first["status"] == "lost" and not overlapped
    while not api.get(f"/v1/jobs/{job_id}").json()["progress"].get("step"):
        time.sleep(0.1)  # attempt 2 trains (its lease renewed while it waited)
    assert api.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelling"
    b.join(60)
    assert second["status"] == "cancelled" and training_children() == []
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["attempt"] == 2
