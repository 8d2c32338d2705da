"""Webhooks against a real HTTP receiver on 127.0.0.1; the signature is checked with an
independent implementation (hashlib/hmac by hand, following the documented scheme)."""

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from app.db.models import WebhookDelivery
from app.db.session import session_scope
from app.services.webhooks import deliver_due
from tests.app.conftest import build_api, make_settings, tiny_job
from worker.supervisor import claim_and_run

pytestmark = pytest.mark.integration  # real HTTP receivers and training runs


class Receiver:
    def __init__(self, status=200, location=None, delay=0.0):
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                time.sleep(delay)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((self.path, dict(self.headers), body))
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def verify(secret: str, header: str, body: bytes) -> bool:
    fields = dict(part.split("=", 1) for part in header.split(","))
    message = fields["t"].encode() + b"." + body
    expected = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields["v1"])


def _deliveries(api, job_id):
    from sqlalchemy import select

    with session_scope(api.settings.db_url) as session:
        return list(
            session.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id))
        )


def _delivered(api, job_id):
    """Drain the outbox the way the Dispatcher does (retries are due after a backoff,
    so wait for them), and return the job's single delivery row."""
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        deliver_due(api.settings)
        rows = _deliveries(api, job_id)
        assert len(rows) == 1, rows
        if rows[0].status != "pending":
            return rows[0]
        time.sleep(0.2)
    raise AssertionError("webhook delivery not finished")


def _hook_settings(tmp_path, **overrides):
    # receivers listen on loopback, which the default policy refuses: allow it here
    return make_settings(tmp_path, webhook_allow="127.0.0.1", **overrides)


@pytest.fixture
def hook_api(tmp_path):
    gen = build_api(_hook_settings(tmp_path, webhook_attempts=2, webhook_timeout_s=2))
    yield next(gen)
    gen.close()


def test_terminal_state_posts_a_signed_webhook(hook_api):
    api, receiver = hook_api, Receiver()
    job = api.post("/v1/jobs", json=tiny_job(webhook_url=receiver.url + "/hook")).json()
    assert claim_and_run(api.settings, job["id"]) == "succeeded"
    row = _delivered(api, job["id"])
    assert row.status == "delivered" and row.attempts == 1
    path, headers, body = receiver.received[0]
    secret = api.get("/v1/tenant").json()["webhook_secret"]
    assert path == "/hook" and verify(secret, headers["KD-Signature"], body)
    assert not verify("wrong-secret", headers["KD-Signature"], body)
    assert headers["Host"] == receiver.url.removeprefix("http://")
    assert json.loads(body)["job"] == {
        **json.loads(body)["job"],
        "id": job["id"],
        "status": "succeeded",
    }
    receiver.close()


def test_redirects_are_not_followed_and_failures_are_retried(hook_api):
    api = hook_api
    target = Receiver()
    redirector = Receiver(status=302, location=target.url + "/stolen")
    job = api.post("/v1/jobs", json=tiny_job(webhook_url=redirector.url)).json()
    # a queued job cancelled through the API ends at once, and queues its delivery
    assert api.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
    row = _delivered(api, job["id"])
    assert row.status == "failed" and row.attempts == 2 and row.response_status == 302
    assert len(redirector.received) == 2 and target.received == []
    redirector.close()
    target.close()


def test_webhook_url_must_be_http(hook_api):
    r = hook_api.post("/v1/jobs", json=tiny_job(webhook_url="file:///etc/passwd"))
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == "/webhook_url"


def test_a_slow_target_is_cut_off_by_the_timeout(tmp_path):
    gen = build_api(_hook_settings(tmp_path, webhook_attempts=1, webhook_timeout_s=0.5))
    api = next(gen)
    slow = Receiver(delay=3)
    job = api.post("/v1/jobs", json=tiny_job(webhook_url=slow.url)).json()
    api.post(f"/v1/jobs/{job['id']}/cancel")
    row = _delivered(api, job["id"])
    assert row.status == "failed" and "Timeout" in row.last_error
    gen.close()
    slow.close()


def test_a_job_failed_by_the_reaper_queues_its_webhook(tmp_path):
    """The outbox row is written by the transition itself, so the reaper's path (a dead
    worker, no attempts left) records a delivery like every other path."""
    from datetime import timedelta

    from app.db import repository as repo
    from app.db.models import Job, utcnow
    from worker.maintenance import reap_once

    gen = build_api(_hook_settings(tmp_path, max_attempts=1))
    api = next(gen)
    receiver = Receiver()
    try:
        job = api.post("/v1/jobs", json=tiny_job(webhook_url=receiver.url)).json()
        with session_scope(api.settings.db_url) as session:
            assert repo.claim(session, job["id"], "dead-worker", 60) is not None
            session.get(Job, job["id"]).lease_expires_at = utcnow() - timedelta(seconds=1)
        assert reap_once(api.settings) == [(job["id"], "failed")]
        row = _delivered(api, job["id"])
        assert row.event == "job.failed" and row.status == "delivered"
        assert json.loads(receiver.received[0][2])["job"]["status"] == "failed"
    finally:
        gen.close()
        receiver.close()
