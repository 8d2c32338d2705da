"""One client must not exhaust the service for the others: metric labels, request
bodies, validation cost, unrunnable resources, quotas and fair share."""

from __future__ import annotations

import secrets

import httpx
import pytest

from tests.security.conftest import Server
from tests.support.specs import tiny_job

pytestmark = pytest.mark.integration  # a real kd serve


def test_metrics_labels_come_from_a_fixed_set(server: Server):
    junk = [f"X{secrets.token_hex(8).upper()}" for _ in range(40)]
    with httpx.Client(base_url=server.url, timeout=30) as c:
        for method in junk:
            c.request(method, f"/no/such/{secrets.token_hex(4)}")
        body = c.get("/metrics").text
    assert not any(m in body for m in junk)
    assert 'method="other"' in body and 'route="unmatched"' in body


def test_json_bodies_are_capped_before_parsing_and_authentication(server: Server):
    big = b'{"name": "' + b"a" * (5 * 1024**2) + b'"}'
    with httpx.Client(base_url=server.url, timeout=60) as anonymous:
        r = anonymous.post("/v1/jobs", content=big, headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and r.json()["status"] == 413

        def chunks():  # no Content-Length: counted as it streams
            for _ in range(50):
                yield b" " * (128 * 1024)

        r = anonymous.post(
            "/v1/jobs/validate", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 413
        assert anonymous.get("/healthz").status_code == 200


def test_validation_sizes_jobs_without_building_them(server: Server):
    huge_model = tiny_job(
        kind="distill",
        teacher={"arch": "vgg19", "num_classes": 100_000},
        student={"arch": "resnet18", "num_classes": 100_000},
        dataset={
            "builtin": "synthetic",
            "num_samples": 100,
            "shape": [3, 32, 32],
            "image_size": 1024,
        },
    )
    huge_data = tiny_job(
        dataset={"builtin": "synthetic", "num_samples": 1_000_000, "shape": [3, 4096, 4096]}
    )
    with server.client() as c:
        r = c.post("/v1/jobs/validate", json=huge_model).json()
        assert not r["valid"]
        assert any("parameters" in e["msg"] for e in r["errors"]), r
        assert any(e["loc"] == "/training/batch_size" for e in r["errors"]), r
        r = c.post("/v1/jobs", json=huge_data)
        assert r.status_code == 422 and r.json()["errors"][0]["loc"] == "/dataset", r.text


def test_resources_no_executor_can_run_are_refused(server: Server):
    spec = tiny_job(resources={"gpus": 4, "gpu_type": "h200"})
    with server.client() as c:
        r = c.post("/v1/jobs", json=spec)
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["loc"] == "/resources"
        assert "kd.h200.x4" in r.json()["errors"][0]["msg"]


def test_per_tenant_quotas_answer_429_with_retry_after(server: Server):
    active = server.tenant("busy", "--max-active-jobs", "2")
    for _ in range(2):
        assert active.post("/v1/jobs", json=tiny_job()).status_code == 201
    r = active.post("/v1/jobs", json=tiny_job())
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0, r.text
    # another tenant is not affected
    other = server.tenant("calm")
    assert other.post("/v1/jobs", json=tiny_job()).status_code == 201

    rate = server.tenant("hasty", "--submissions-per-minute", "3")
    codes = [rate.post("/v1/jobs", json=tiny_job()).status_code for _ in range(4)]
    assert codes == [201, 201, 201, 429]

    urgent = server.tenant("urgent")  # the default ceiling is 4
    r = urgent.post("/v1/jobs", json=tiny_job(priority=9))
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == "/priority"
    assert urgent.post("/v1/jobs", json=tiny_job(priority=4)).status_code == 201

    small = server.tenant("small", "--max-stored-bytes", "1000")
    r = small.post(
        "/v1/files", files={"file": ("w.bin", bytes(5000))}, data={"purpose": "checkpoint"}
    )
    assert r.status_code == 429 and "Retry-After" in r.headers, r.text
    assert small.get("/v1/files").json()["data"] == []  # nothing was kept


def test_tenants_of_the_same_priority_take_turns(server: Server):
    flood, polite = server.tenant("flood"), server.tenant("polite")
    fair = {"resources": {"gpu_type": "fair"}}
    flooded = [flood.post("/v1/jobs", json=tiny_job(**fair)).json() for _ in range(4)]
    mine = polite.post("/v1/jobs", json=tiny_job(**fair)).json()
    assert mine["queue"] == "kd.fair"
    # first come would make it 5th; taking turns, it runs right after flood's first job
    assert mine["queue_position"] == 2
    positions = [flood.get(f"/v1/jobs/{j['id']}").json()["queue_position"] for j in flooded]
    assert positions == [1, 3, 4, 5]
