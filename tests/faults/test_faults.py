"""Faults injected for real into a production-shaped deployment (PostgreSQL, Redis,
`kd serve`, `kd worker` processes). After each, the database must show every job ended
exactly once, with contiguous events, never two runs at once, resumed from a checkpoint
rather than from scratch. Figures for the README's table go to out/fault-results.json."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import threading
import time

import httpx
import pytest

from tests.faults.cluster import Cluster, wait_until, write_result
from tests.support.procs import TRAINING_IN_A_THREAD
from tests.support.specs import training_spec

pytestmark = [pytest.mark.integration, pytest.mark.slow(seconds=277)]


@pytest.fixture
def cluster(tmp_path, own_redis, own_postgres):
    c = Cluster(tmp_path, own_redis, own_postgres)
    yield c
    leftover = c.training_children()
    c.close()
    assert leftover == [], "a training process outlived its worker"


def test_sigkill_worker_mid_epoch_resumes_from_checkpoint(cluster):
    cluster.start_api()
    rows = []
    for kill_after in (1, 2, 3):  # kill once epoch 1, 2, 3's checkpoint is recorded
        worker = cluster.start_worker()
        job_id = cluster.submit(training_spec(f"kill-worker-{kill_after}"))
        # (the newest epoch, not a count: older checkpoints are pruned, KD_KEEP_CHECKPOINTS)
        wait_until(
            lambda j=job_id, k=kill_after: max(cluster.checkpoint_epochs(j), default=0) >= k,
            180,
            "checkpoints",
        )
        time.sleep(0.25 * kill_after)  # at different points of the next epoch
        cluster.kill_worker(worker)
        wait_until(lambda: cluster.training_children() == [], 10, "the training child to die")
        cluster.start_worker()  # a fresh worker; the reaper requeues after the lease
        end = cluster.wait_status(job_id, ("succeeded", "failed", "cancelled"))
        audit = cluster.audit(job_id)
        assert end["status"] == "succeeded" and audit["attempts"] == 2, (end, audit)
        resumed = audit["resume_steps"][1]
        assert resumed is not None and resumed >= cluster.checkpoint_steps(job_id)[0]
        assert any("lease expired" in t[2] for t in cluster.transitions(job_id))
        # a lower bound of the work redone: steps the first attempt reported (progress is
        # reported every 10 steps, at most once a second) past the step it resumed from
        events = cluster.events(job_id)
        second = next(e[0] for e in events if e[1] == "attempt" and e[2]["attempt"] == 2)
        reached = max(e[2]["step"] for e in events if e[0] < second and e[1] == "progress")
        rows.append(
            {
                "job": job_id,
                "redone_steps": max(0, reached - resumed),
                "total_steps": audit["total_steps"],
            }
        )
        for w in cluster.workers:
            if w.popen.poll() is None:
                cluster.kill_worker(w)
    write_result(
        "sigkill_worker",
        {
            "runs": len(rows),
            "jobs_lost": 0,
            "duplicate_runs": 0,
            "reported_steps_past_resume": [r["redone_steps"] for r in rows],
            "total_steps_per_job": rows[0]["total_steps"],
        },
    )


def test_sigkill_training_child_is_retried(cluster):
    cluster.start_api()
    cluster.start_worker()
    job_id = cluster.submit(training_spec("kill-child", epochs=6))
    wait_until(lambda: cluster.checkpoint_steps(job_id), 180, "a checkpoint")
    (child,) = wait_until(cluster.training_children, 10, "the child")
    os.kill(child, signal.SIGKILL)
    end = cluster.wait_status(job_id, ("succeeded", "failed"))
    audit = cluster.audit(job_id)
    assert end["status"] == "succeeded" and audit["attempts"] == 2
    assert any("killed by signal 9" in t[2] for t in cluster.transitions(job_id))
    write_result(
        "sigkill_child",
        {
            "runs": 1,
            "jobs_lost": 0,
            "duplicate_runs": 0,
            "resumed_from_step": audit["resume_steps"][1],
        },
    )


def test_redis_restart_loses_no_queued_job(cluster):
    cluster.start_api()
    cluster.start_worker(TRAINING_IN_A_THREAD)
    ids = [cluster.submit(training_spec(f"redis-{i}", epochs=3)) for i in range(4)]
    wait_until(lambda: cluster.job(ids[0])["status"] == "running", 120, "a running job")
    cluster.broker.restart()  # empty: queued messages are gone
    for job_id in ids:
        assert cluster.wait_status(job_id, ("succeeded", "failed"), 300)["status"] == "succeeded"
        cluster.audit(job_id)
    write_result("redis_restart", {"runs": len(ids), "jobs_lost": 0, "duplicate_runs": 0})


def _watch(base: str, key: str, job_id: str, out: list[int], stop: threading.Event) -> None:
    """An SSE client that reconnects with Last-Event-ID until the terminal event."""
    headers = {"Authorization": f"Bearer {key}"}
    while not stop.is_set():
        if out:
            headers["Last-Event-ID"] = str(out[-1])
        try:
            with httpx.stream(
                "GET",
                f"{base}/v1/jobs/{job_id}/events/stream",
                headers=headers,
                timeout=httpx.Timeout(5, read=30),
            ) as r:
                event = None
                for line in r.iter_lines():
                    if line.startswith("id: "):
                        out.append(int(line[4:]))
                    elif line.startswith("data: ") and '"status": "succeeded"' in line:
                        event = "end"
                if event == "end":
                    return
        except httpx.HTTPError:
            time.sleep(0.3)


def test_api_restart_sse_clients_get_every_event_once(cluster):
    cluster.start_api()
    cluster.start_worker(TRAINING_IN_A_THREAD)
    job_id = cluster.submit(training_spec("sse-restart", epochs=6))
    seen: list[list[int]] = [[] for _ in range(5)]
    stop = threading.Event()
    threads = [
        threading.Thread(target=_watch, args=(cluster.base, cluster.key, job_id, seen[i], stop))
        for i in range(5)
    ]
    for t in threads:
        t.start()
    wait_until(lambda: cluster.checkpoint_steps(job_id), 180, "a checkpoint")
    cluster.api.stop()  # clients are connected; the API goes away mid-job
    time.sleep(1)
    cluster.start_api()
    cluster.wait_status(job_id, ("succeeded",), 180)
    for t in threads:
        t.join(60)
    stop.set()
    expected = [e[0] for e in cluster.events(job_id)]
    for ids in seen:
        assert ids == expected  # every event, once, in order
    write_result(
        "api_restart_sse",
        {"runs": 1, "clients": len(seen), "jobs_lost": 0, "events_lost_or_duplicated": 0},
    )


def test_postgres_restart_while_training(cluster):
    cluster.start_api()
    cluster.start_worker(TRAINING_IN_A_THREAD)
    job_id = cluster.submit(training_spec("pg-restart", epochs=8))
    wait_until(lambda: cluster.checkpoint_steps(job_id), 180, "a checkpoint")
    cluster.postgres.restart()
    end = cluster.wait_status(job_id, ("succeeded", "failed"), 240)
    audit = cluster.audit(job_id)
    assert end["status"] == "succeeded"
    write_result(
        "postgres_restart",
        {"runs": 1, "jobs_lost": 0, "duplicate_runs": 0, "attempts": audit["attempts"]},
    )


def test_cancel_queued_and_running_leaves_no_process(cluster):
    cluster.start_api()
    queued = cluster.submit(training_spec("cancel-queued"))
    assert cluster.client.post(f"/v1/jobs/{queued}/cancel").json()["status"] == "cancelled"
    cluster.start_worker()
    running = cluster.submit(training_spec("cancel-running", epochs=50))
    wait_until(lambda: cluster.job(running)["progress"].get("step"), 180, "progress")
    assert cluster.client.post(f"/v1/jobs/{running}/cancel").status_code == 202
    assert (
        cluster.wait_status(running, ("cancelled", "succeeded", "failed"), 60)["status"]
        == "cancelled"
    )
    wait_until(lambda: cluster.training_children() == [], 20, "no training process")
    for job_id in (queued, running):
        assert cluster.audit(job_id)["status"] == "cancelled"
    time.sleep(cluster_lease := 7)  # a late reaper or message must not revive them
    assert cluster.job(running)["status"] == "cancelled" and cluster_lease
    write_result("cancel", {"runs": 2, "jobs_lost": 0, "duplicate_runs": 0, "orphan_processes": 0})


def fill_leaving(path, free_bytes: int) -> None:
    """Fill the file system under `path` until about `free_bytes` are left. The job keeps
    writing beside us (its next checkpoint may land while we fill), so the free space is
    read again before each chunk, and a chunk that meets a full disk gives `free_bytes`
    back instead of failing the test."""

    def over() -> int:  # the free bytes past `free_bytes`
        stat = os.statvfs(path.parent)
        return stat.f_bavail * stat.f_frsize - free_bytes

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        while (left := over()) > 0:
            try:
                os.write(fd, b"\0" * min(left, 1 << 20))
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                os.ftruncate(fd, max(0, os.fstat(fd).st_size - free_bytes))
                break
    finally:
        os.close(fd)


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(tmp_path, pg_url):
    """The jobs folder is a small tmpfs; once the first checkpoint is recorded it is filled
    up, so the next checkpoint write fails with ENOSPC."""
    from kdcore.io.checkpoints import load_checkpoint
    from tests.app.conftest import build_api, make_settings
    from worker.supervisor import claim_and_run

    settings = make_settings(tmp_path, pg_url, max_attempts=2, training_launch="process")
    jobs_dir = settings.jobs_dir
    jobs_dir.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(jobs_dir)], check=True)
    gen = build_api(settings)
    api = next(gen)
    try:
        job_id = api.post("/v1/jobs", json=training_spec("disk-full", epochs=6)).json()["id"]
        result: dict = {}
        runner = threading.Thread(
            target=lambda: result.update(first=claim_and_run(settings, job_id))
        )
        runner.start()
        wait_until(lambda: api.get(f"/v1/jobs/{job_id}/checkpoints").json(), 180, "a checkpoint")
        fill_leaving(jobs_dir / "filler", 4096)
        runner.join(120)
        assert result["first"] == "queued"  # a crash: retried
        assert claim_and_run(settings, job_id) == "failed"
        job = api.get(f"/v1/jobs/{job_id}").json()
        assert "No space left on device" in job["error"]
        # the checkpoints written before the disk filled (one, or two when the next epoch
        # ended while the filler was written) are kept and recorded; the failed write was
        # never recorded and left no half-written file
        checkpoints = api.get(f"/v1/jobs/{job_id}/checkpoints").json()
        assert checkpoints
        ckpt_dir = jobs_dir / job_id / "checkpoints"
        recorded = sorted(f"epoch{c['epoch']}.pt" for c in checkpoints)
        assert sorted(p.name for p in ckpt_dir.iterdir()) == recorded
        last = max(checkpoints, key=lambda c: c["step"])
        assert load_checkpoint(ckpt_dir / f"epoch{last['epoch']}.pt")["step"] == last["step"]
        events = api.get(f"/v1/jobs/{job_id}/events", params={"limit": 200}).json()["data"]
        attempts = [e["data"] for e in events if e["type"] == "attempt"]
        assert attempts[1]["resume_from_step"] == last["step"]
        write_result(
            "disk_full",
            {
                "runs": 1,
                "jobs_lost": 0,
                "duplicate_runs": 0,
                "half_written_files_recorded": 0,
                "ended": job["status"],
            },
        )
    finally:
        gen.close()
        subprocess.run(["umount", "-l", str(jobs_dir)], check=False)
