"""Smaller holes: dashboard headers and key storage, what /metrics reveals, job names,
and file permissions whatever the umask."""

from __future__ import annotations

import re
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.web import STATIC
from tests.security.conftest import Server, start_server
from tests.support.specs import tiny_job

pytestmark = pytest.mark.integration  # a real kd serve


def test_dashboard_is_served_with_a_strict_policy(server: Server):
    r = httpx.get(server.url + "/")
    csp = r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Referrer-Policy"] == "no-referrer"
    assert "<script>" not in r.text and "onclick=" not in r.text  # no inline script
    api = httpx.get(server.url + "/v1/jobs")  # the API's answers carry them too
    assert api.headers["X-Content-Type-Options"] == "nosniff"


def test_the_api_explorer_loads_only_this_services_files(server: Server):
    """Security round 2: /docs loaded Swagger UI from a CDN without Subresource Integrity,
    outside the CSP. Now every script and style is the service's own, under the same
    policy as the dashboard; /redoc (another third-party script) is gone."""
    r = httpx.get(server.url + "/docs")
    assert r.status_code == 200
    assert (
        r.headers["Content-Security-Policy"]
        == httpx.get(server.url + "/").headers["Content-Security-Policy"]
    )
    sources = re.findall(r'(?:src|href)="([^"]+)"', r.text)
    assert sources and all(src.startswith("/") and not src.startswith("//") for src in sources)
    assert "<script>" not in r.text  # no inline script
    for src in sources:
        asset = httpx.get(server.url + src)
        assert asset.status_code == 200 and len(asset.content) > 100, src
    assert httpx.get(server.url + "/redoc").status_code == 404
    assert httpx.get(server.url + "/openapi.json").json()["info"]["title"] == "kdservice"


def test_the_vendored_explorer_is_the_pinned_release():
    """The Swagger UI files are npm's swagger-ui-dist at the version in their folder's
    name: their sha256 match SHA256SUMS, recorded when they were vendored."""
    import hashlib

    from app.web import SWAGGER_UI

    sums = dict(line.split()[::-1] for line in (SWAGGER_UI / "SHA256SUMS").read_text().splitlines())
    assert set(sums) == {"swagger-ui-bundle.js", "swagger-ui.css"}
    for name, digest in sums.items():
        assert hashlib.sha256((SWAGGER_UI / name).read_bytes()).hexdigest() == digest, name
    assert (SWAGGER_UI / "LICENSE").is_file()


def test_the_key_is_kept_for_the_session_unless_remembered():
    js = (STATIC / "app.js").read_text()
    assert "sessionStorage.setItem" not in js  # one place decides where it goes
    assert "(remember.checked ? localStorage : sessionStorage).setItem(KEY" in js
    assert js.count("localStorage.setItem") == 0


def test_job_names_with_control_characters_are_refused(server: Server):
    with server.client() as c:
        for name in ("a\x00b", "line\nbreak", "esc\x1b[31m", "del\x7f"):
            r = c.post("/v1/jobs", json=tiny_job(name=name))
            assert r.status_code == 422 and r.json()["errors"][0]["loc"] == "/name", name


def test_the_name_filter_matches_literally(server: Server):
    c = server.tenant("names")
    for name in ("a_b", "axb", "100%", "1000"):
        assert c.post("/v1/jobs", json=tiny_job(name=name)).status_code == 201

    def names(query: str) -> list[str]:
        page = c.get("/v1/jobs", params={"name": query}).json()["data"]
        return sorted(j["name"] for j in page)

    assert names("a_b") == ["a_b"]
    assert names("%") == ["100%"]
    assert names("_") == ["a_b"]


@pytest.fixture(scope="module")
def runner(tmp_path_factory) -> Iterator[Server]:
    """A server that runs jobs, started with umask 000, its /metrics behind a token."""
    s = start_server(tmp_path_factory.mktemp("runner"), umask=0, KD_METRICS_TOKEN="scrape-me")
    yield s
    s.proc.stop()


def _wait(c: httpx.Client, job_id: str, states: set[str], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = c.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in states:
            return job
        time.sleep(0.2)
    raise AssertionError(job)


def test_metrics_need_the_token_and_name_no_job(runner: Server):
    with runner.client() as c:
        long = tiny_job(training={"epochs": 10_000, "batch_size": 8, "precision": "fp32"})
        job = c.post("/v1/jobs", json=long).json()
        _wait(c, job["id"], {"running"})
        time.sleep(2)  # a heartbeat stores its throughput
        assert httpx.get(runner.url + "/metrics").status_code == 401
        wrong = httpx.get(runner.url + "/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        body = httpx.get(
            runner.url + "/metrics", headers={"Authorization": "Bearer scrape-me"}
        ).text
        assert 'kd_jobs{status="running"} 1.0' in body
        assert job["id"] not in body and not re.search(r"job_[0-9a-f]{24}", body)
        c.post(f"/v1/jobs/{job['id']}/cancel")
        _wait(c, job["id"], {"cancelled"})


def _safetensors() -> bytes:
    from safetensors.torch import save
    from torch import nn

    return save(nn.Linear(2, 2).state_dict())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_private_files_whatever_the_umask(runner: Server):
    with runner.client() as c:
        weights = c.post(
            "/v1/files",
            files={"file": ("w.safetensors", _safetensors())},
            data={"purpose": "checkpoint"},
        ).json()
        job = c.post("/v1/jobs", json=tiny_job()).json()
        done = _wait(c, job["id"], {"succeeded", "failed"})
        assert done["status"] == "succeeded", done
    data = runner.data
    assert _mode(data) == 0o700
    assert _mode(data / "kdservice.db") == 0o600
    assert _mode(Path(data / "files" / weights["id"])) == 0o600
    outputs = [p for p in (data / "jobs" / job["id"]).rglob("*") if p.is_file()]
    assert outputs and all(_mode(p) == 0o600 for p in outputs), [
        (p.name, oct(_mode(p))) for p in outputs
    ]
    folders = [p for p in data.rglob("*") if p.is_dir()]
    assert all(_mode(p) & 0o077 == 0 for p in folders)
