"""End to end against real processes: `kd serve` on the embedded default (SQLite, local
executor), and `kd serve` + `kd worker` on PostgreSQL and Redis (Celery). Each run
trains a teacher with a `train` job, uploads it, distils it on digits while following
the SSE stream, downloads the student, checks its digest and loads it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis
from safetensors.torch import load

from kdcore.models import build_model
from tests.app.conftest import create_pg_database, drop_pg_database
from tests.support.procs import Proc, serve

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REDIS_DB = 5


def follow(client: httpx.Client, job_id: str, timeout: float = 240) -> list[dict]:
    """Read the SSE stream to its end; reconnect with Last-Event-ID if it drops."""
    events: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        headers = {"Last-Event-ID": str(events[-1]["id"])} if events else {}
        with client.stream(
            "GET",
            f"/v1/jobs/{job_id}/events/stream",
            headers=headers,
            timeout=httpx.Timeout(10, read=60),
        ) as r:
            assert r.status_code == 200
            current: dict = {}
            for line in r.iter_lines():
                if line.startswith("id: "):
                    current["id"] = int(line[4:])
                elif line.startswith("event: "):
                    current["event"] = line[7:]
                elif line.startswith("data: "):
                    current["data"] = json.loads(line[6:])
                elif line == "" and "id" in current:
                    events.append(current)
                    current = {}
        if (
            events
            and events[-1]["event"] == "status"
            and events[-1]["data"]["status"] in ("succeeded", "failed", "cancelled")
        ):
            return events
    raise AssertionError(f"stream did not end; got {events[-3:]}")


def first_job(base: str, key: str, tmp_path: Path) -> None:
    client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    # a sample of digits keeps the run short; every path (train, upload, distil, SSE,
    # download, load) is the same as on the whole set
    digits = {"builtin": "digits", "image_size": 16, "max_samples": 600}
    # 1. a teacher from a `train` job
    r = client.post(
        "/v1/jobs",
        json={
            "name": "teacher",
            "kind": "train",
            "student": {"arch": "cifar_resnet8"},
            "dataset": digits,
            "training": {"epochs": 3, "lr": 0.1},
        },
    )
    assert r.status_code == 201, r.text
    teacher_job = r.json()["id"]
    events = follow(client, teacher_job)
    assert events[-1]["data"]["status"] == "succeeded", events[-1]
    arts = {a["name"]: a for a in client.get(f"/v1/jobs/{teacher_job}/artifacts").json()}
    weights = client.get(arts["student.safetensors"]["download_url"]).content
    # 2. upload it as a file
    up = client.post(
        "/v1/files",
        files={"file": ("teacher.safetensors", weights)},
        data={"purpose": "checkpoint"},
    )
    assert up.status_code == 201, up.text
    # 3. distil on digits and follow the stream
    spec = {
        "name": "e2e-distill",
        "kind": "distill",
        "teacher": {"arch": "cifar_resnet8", "checkpoint": up.json()["id"]},
        "student": {"arch": "small_cnn"},
        "dataset": digits,
        "distillation": {"method": "kd", "temperature": 4.0, "ce_weight": 0.5, "kd_weight": 0.5},
        "training": {"epochs": 3, "lr": 0.05},
        "export": ["safetensors", "onnx"],
    }
    r = client.post("/v1/jobs", json=spec, headers={"Idempotency-Key": "e2e-1"})
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    events = follow(client, job_id)
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["data"]["status"] == "succeeded", events[-1]
    assert sum(e["event"] == "epoch" for e in events) == 3
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["report"]["teacher"]["arch"] == "cifar_resnet8"
    # 4. download the student, check the digest, load it
    arts = {a["name"]: a for a in client.get(f"/v1/jobs/{job_id}/artifacts").json()}
    r = client.get(arts["student.safetensors"]["download_url"])
    assert r.status_code == 200
    digest = hashlib.sha256(r.content).hexdigest()
    assert r.headers["etag"] == f'"{digest}"'
    config = client.get(arts["student.json"]["download_url"]).json()
    model = build_model(config["arch"], config["num_classes"], tuple(config["input_shape"]))
    model.load_state_dict(load(r.content))
    assert config["arch"] == "small_cnn"


def test_embedded_default(tmp_path):
    data = tmp_path / "data"
    server, base = serve(
        {"KD_DATA_DIR": str(data), "KD_DATABASE_URL": "", "KD_BROKER_URL": ""},
        tmp_path / "serve.log",
    )
    try:
        key_file = data / "api_key"
        assert oct(key_file.stat().st_mode & 0o777) == "0o600"
        # the start block, printed once the service answers, shows the new key once
        deadline = time.monotonic() + 60
        while "new, for tenant 'default'" not in server.log.read_text():
            assert time.monotonic() < deadline, server.log.read_text()[-2000:]
            time.sleep(0.2)
        assert key_file.read_text().strip() in server.log.read_text()
        first_job(base, key_file.read_text().strip(), tmp_path)
    finally:
        server.stop()


def test_production_shape_postgres_redis_celery(tmp_path):
    db = create_pg_database()
    r = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    r.flushdb()
    env = {
        "KD_ENVIRONMENT": "production",
        "KD_DATA_DIR": str(tmp_path / "data"),
        "KD_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{db}",
        "KD_BROKER_URL": f"redis://127.0.0.1:6379/{REDIS_DB}",
    }
    procs: list[Proc] = []
    try:
        migrate = subprocess.run(
            [sys.executable, "-m", "kdservice.cli", "migrate"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
        )
        assert migrate.returncode == 0, migrate.stderr
        keys = subprocess.run(
            [sys.executable, "-m", "kdservice.cli", "keys", "create", "--tenant", "e2e"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
        )
        assert keys.returncode == 0, keys.stderr
        key = keys.stdout.split()[1]
        procs.append(Proc(["worker"], env, tmp_path / "worker.log"))
        api, base = serve(env, tmp_path / "serve.log")
        procs.append(api)
        ready = httpx.get(f"{base}/readyz").json()
        assert ready["checks"] == {"database": "ok", "broker": "ok"}
        first_job(base, key, tmp_path)
        for log in ("serve.log", "worker.log"):  # keys are never logged
            assert key not in (tmp_path / log).read_text()
    finally:
        for p in procs:
            p.stop()
        drop_pg_database(db)
