"""A production-shaped deployment in real processes for fault tests: a fresh database
and a Redis database on the fault tests' own servers (tests.faults.servers), `kd serve`
and any number of `kd worker`s, with short leases so that failures are detected in
seconds. Every process it starts carries its mark in the environment: the tests find
and kill only theirs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis
from sqlalchemy import select

from app.db.models import Job, JobEvent, JobTransition
from app.db.session import get_engine, session_scope
from tests.faults.servers import OwnPostgres, OwnRedis
from tests.support.procs import Proc, serve, wait_until

FAST = {
    "KD_LEASE_S": "6",
    "KD_HEARTBEAT_S": "0.5",
    "KD_SWEEP_INTERVAL_S": "1",
    "KD_REPUBLISH_AFTER_S": "3",
    "KD_CANCEL_GRACE_S": "5",
    "KD_MAX_ATTEMPTS": "4",
    # the load tests submit hundreds of jobs as one tenant
    "KD_MAX_ACTIVE_JOBS": "100000",
    "KD_SUBMISSIONS_PER_MINUTE": "100000",
}
MARK = "KD_FAULTS_CLUSTER"  # in the environment of every process a cluster starts


def training_children(mark: str) -> list[int]:
    """Training processes started by the cluster with this mark, wherever they were
    reparented (a killed worker's child is adopted by init)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if b"worker.training_process" not in (proc / "cmdline").read_bytes():
                    continue
                environ = (proc / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"{MARK}={mark}".encode() in environ:
                pids.append(int(proc.name))
    return pids


class Cluster:
    def __init__(self, tmp: Path, broker: OwnRedis, postgres: OwnPostgres, **env: str):
        self.tmp, self.broker, self.postgres = tmp, broker, postgres
        self.mark = uuid.uuid4().hex
        self.db = f"kd_faults_{self.mark[:10]}"
        with psycopg.connect(postgres.url().replace("+psycopg", ""), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.db}"')
        self.db_url = postgres.url(self.db)
        self.env = {
            MARK: self.mark,
            "KD_ENVIRONMENT": "production",
            "KD_DATA_DIR": str(tmp / "data"),
            "KD_DATABASE_URL": self.db_url,
            "KD_BROKER_URL": f"{broker.url}/0",
            **FAST,
            **env,
        }
        self._run("migrate")
        self.key = self._run("keys", "create", "--tenant", "faults").split()[1]
        self.port = 0  # the system's choice at the first start; kept when the API restarts
        self.base = ""
        self.api: Proc | None = None
        self.workers: list[Proc] = []
        self.client = httpx.Client(timeout=30, headers={"Authorization": f"Bearer {self.key}"})

    def _run(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "kdservice.cli", *args],
            capture_output=True,
            text=True,
            env={**os.environ, **self.env},
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def start_api(self) -> None:
        self.api, self.base = serve(
            self.env, self.tmp / f"api-{time.monotonic_ns()}.log", port=self.port
        )
        self.port = int(self.base.rsplit(":", 1)[1])
        self.client.base_url = httpx.URL(self.base)

    def start_worker(
        self,
        env: dict[str, str] | None = None,
        command: list[str] | None = None,
        queues: str = "kd",
    ) -> Proc:
        """`kd worker`; `env` on top of the cluster's, `command` in place of this
        interpreter's `kd` (another host's: tests.support.netns)."""
        n = len(self.workers)
        worker = Proc(
            ["worker", "--hostname", f"w{n}@faults", "--queues", queues],
            {**self.env, **(env or {})},
            self.tmp / f"worker{n}.log",
            command=command,
        )
        self.workers.append(worker)
        return worker

    def kill_worker(self, worker: Proc) -> None:
        """SIGKILL the whole process group: Celery's main process and its pool child."""
        os.killpg(worker.popen.pid, signal.SIGKILL)
        worker.popen.wait()

    def submit(self, spec: dict[str, Any], **headers: str) -> str:
        r = self.client.post("/v1/jobs", json=spec, headers=headers)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self.client.get(f"/v1/jobs/{job_id}").json())

    def wait_status(self, job_id: str, statuses: tuple[str, ...], timeout: float = 180) -> dict:
        def check() -> dict | None:
            with session_scope(self.db_url) as s:
                job = s.get(Job, job_id)
                return {"status": job.status} if job and job.status in statuses else None

        wait_until(check, timeout, f"{job_id} to reach {statuses}")
        with session_scope(self.db_url) as s:
            job = s.get(Job, job_id)
            return {"status": job.status, "attempt": job.attempt, "error": job.error}

    def checkpoint_steps(self, job_id: str) -> list[int]:
        return [c["step"] for c in self.client.get(f"/v1/jobs/{job_id}/checkpoints").json()]

    def checkpoint_epochs(self, job_id: str) -> list[int]:
        return [c["epoch"] for c in self.client.get(f"/v1/jobs/{job_id}/checkpoints").json()]

    def events(self, job_id: str) -> list[tuple[int, str, dict]]:
        with session_scope(self.db_url) as s:
            rows = s.scalars(
                select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)
            )
            return [(e.seq, e.type, e.data) for e in rows]

    def transitions(self, job_id: str) -> list[tuple[str | None, str, str]]:
        with session_scope(self.db_url) as s:
            rows = s.scalars(
                select(JobTransition)
                .where(JobTransition.job_id == job_id)
                .order_by(JobTransition.id)
            )
            return [(t.from_status, t.to_status, t.reason) for t in rows]

    def audit(self, job_id: str) -> dict[str, Any]:
        """What the README's table reports for one job, checked for the invariants:
        events numbered without gaps, one terminal transition, never two runs at once."""
        events = self.events(job_id)
        assert [e[0] for e in events] == list(range(1, len(events) + 1)), "event gap"
        trans = self.transitions(job_id)
        terminal = [t for t in trans if t[1] in ("succeeded", "failed", "cancelled")]
        assert len(terminal) == 1, trans
        # a claim starts from queued (a reaped lease goes running -> queued first):
        # running -> running would mean two runs of one job at once
        assert not [t for t in trans if t[0] == "running" and t[1] == "running"], trans
        attempts = [e[2] for e in events if e[1] == "attempt"]
        total = max(
            (e[2].get("total_steps") or 0 for e in events if e[1] in ("progress", "epoch")),
            default=0,
        )
        trained = sum(1 for e in events if e[1] == "epoch")
        return {
            "status": terminal[0][1],
            "attempts": len(attempts),
            "resume_steps": [a["resume_from_step"] for a in attempts],
            "epochs_run": trained,
            "total_steps": total,
        }

    def close(self) -> None:
        for p in [*self.workers, *([self.api] if self.api else [])]:
            p.stop()
        for pid in self.training_children():  # nothing of ours may outlive the test
            os.kill(pid, signal.SIGKILL)
        self.client.close()
        get_engine(self.db_url).dispose()
        with psycopg.connect(self.postgres.url().replace("+psycopg", ""), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')
        redis.Redis.from_url(self.broker.url).flushall()

    def training_children(self) -> list[int]:
        return training_children(self.mark)


def write_result(name: str, row: dict[str, Any]) -> None:
    """Collect figures for the README's table (printed with -s; kept under out/)."""
    path = Path(os.environ.get("KD_FAULT_RESULTS", "out/fault-results.json"))
    path.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(path.read_text()) if path.exists() else {}
    results[name] = row
    path.write_text(json.dumps(results, indent=2))
    print(f"\nFAULT RESULT {name}: {row}")
