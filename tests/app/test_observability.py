"""Operations: Prometheus /metrics, request ids, structured JSON logs carrying the
request id and the job id, and curves.png among a finished job's artifacts."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.db import repository as repo
from app.db.models import Job
from app.db.session import session_scope
from app.logs import JsonFormatter
from tests.app.conftest import Api, build_api, make_settings, tiny_job
from worker.supervisor import claim_and_run


def samples(api: Api) -> dict[tuple[str, tuple], float]:
    r = api.client.get("/metrics")  # no key: scraped like /healthz
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


class Capture:
    """JSON log lines of some loggers, as dicts."""

    def __init__(self, *names: str):
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(JsonFormatter())
        self.loggers = [logging.getLogger(n) for n in names]

    def __enter__(self) -> Capture:
        for lg in self.loggers:
            lg.addHandler(self.handler)
            lg.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: object) -> None:
        for lg in self.loggers:
            lg.removeHandler(self.handler)

    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Api, str, list[dict]]]:
    settings = make_settings(tmp_path_factory.mktemp("obs"))
    gen = build_api(settings)
    api = next(gen)
    job = api.post("/v1/jobs", json=tiny_job()).json()
    with Capture("kd.worker") as capture:
        assert claim_and_run(settings, job["id"]) == "succeeded"
    yield api, job["id"], capture.lines()
    gen.close()


def test_metrics_count_jobs_queue_and_durations(observed: tuple[Api, str, list[dict]]) -> None:
    api, _, _ = observed
    api.post("/v1/jobs", json=tiny_job(name="waiting"))  # stays queued: no executor here
    m = samples(api)
    assert m[("kd_jobs", (("status", "succeeded"),))] == 1
    assert m[("kd_jobs", (("status", "queued"),))] == 1
    assert m[("kd_queue_depth", ())] == 1
    assert m[("kd_job_duration_seconds_count", ())] == 1
    assert m[("kd_job_duration_seconds_sum", ())] > 0
    assert m[("kd_job_queue_wait_seconds_count", ())] == 1
    assert m[("kd_job_duration_seconds_bucket", (("le", "+Inf"),))] == 1


def test_metrics_report_images_per_second_of_running_jobs(
    observed: tuple[Api, str, list[dict]],
) -> None:
    api, _, _ = observed
    job = api.post("/v1/jobs", json=tiny_job(name="running")).json()
    with session_scope(api.settings.db_url) as session:
        assert repo.claim(session, job["id"], "test-worker", 60) is not None
        session.get(Job, job["id"]).progress = {"images_per_s": 1234.5}  # type: ignore[union-attr]
    m = samples(api)
    # the sum over running jobs: no label names a job (ids of every tenant would leak)
    assert m[("kd_running_images_per_second", ())] == 1234.5
    assert not any(dict(labels).get("job_id") for _, labels in m)


def test_http_latency_is_recorded_by_route_template(observed: tuple[Api, str, list[dict]]) -> None:
    api, job_id, _ = observed
    api.get(f"/v1/jobs/{job_id}")
    api.get("/v1/jobs/job_missing")
    m = samples(api)
    ok = ("method", "GET"), ("route", "/v1/jobs/{job_id}"), ("status", "200")
    missing = ("method", "GET"), ("route", "/v1/jobs/{job_id}"), ("status", "404")
    assert m[("kd_http_request_duration_seconds_count", ok)] >= 1
    assert m[("kd_http_request_duration_seconds_count", missing)] >= 1
    assert not any(job_id in str(labels) for (_, labels) in m if _.startswith("kd_http"))


def test_request_id_is_echoed_and_logged(observed: tuple[Api, str, list[dict]]) -> None:
    api, job_id, _ = observed
    with Capture("kd.http") as capture:
        r = api.get(f"/v1/jobs/{job_id}", headers={"X-Request-ID": "req-42"})
        fresh = api.get(f"/v1/jobs/{job_id}")
        other = api.get(f"/v1/jobs/{job_id}")
        bad = api.get(f"/v1/jobs/{job_id}", headers={"X-Request-ID": "no spaces allowed"})
    assert r.headers["X-Request-ID"] == "req-42"
    assert len(fresh.headers["X-Request-ID"]) == 32  # made up when not given
    assert fresh.headers["X-Request-ID"] != other.headers["X-Request-ID"]
    assert bad.headers["X-Request-ID"] != "no spaces allowed"
    lines = capture.lines()
    first = next(line for line in lines if line.get("request_id") == "req-42")
    assert first["msg"] == "request" and first["route"] == "/v1/jobs/{job_id}"
    assert first["status"] == 200 and first["level"] == "info" and first["ms"] >= 0


def test_worker_log_lines_carry_the_job_id(observed: tuple[Api, str, list[dict]]) -> None:
    _, job_id, lines = observed
    started = [line for line in lines if line["msg"] == "job started"]
    ended = [line for line in lines if line["msg"] == "job ended"]
    assert started and started[0]["job_id"] == job_id and started[0]["attempt"] == 1
    assert ended and ended[0]["job_id"] == job_id and ended[0]["status"] == "succeeded"


def test_curves_png_is_an_artifact(observed: tuple[Api, str, list[dict]]) -> None:
    api, job_id, _ = observed
    arts = {a["name"]: a for a in api.get(f"/v1/jobs/{job_id}/artifacts").json()}
    curves = arts["curves.png"]
    assert curves["content_type"] == "image/png"
    body = api.get(curves["download_url"])
    assert body.content[:8] == b"\x89PNG\r\n\x1a\n" and len(body.content) == curves["bytes"]
