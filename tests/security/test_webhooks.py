"""Webhooks: the SSRF policy (at submission and again at delivery) and the outbox, which
keeps deliveries off the request path and off the database pool.

The refused URLs below are never contacted: the policy refuses them before any
connection. The only receivers are this test's own, on 127.0.0.1, reached through
KD_WEBHOOK_ALLOW where a test allows loopback on purpose."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from app.db.migrate import upgrade
from app.db.models import WebhookDelivery
from app.db.session import session_scope
from app.services.egress import AllowList, EgressRefused, resolve
from app.services.webhooks import deliver_due
from tests.app.conftest import build_api, create_pg_database, drop_pg_database, make_settings
from tests.security.conftest import Server, start_server
from tests.support.specs import tiny_job

pytestmark = pytest.mark.integration  # a real kd serve

REFUSED = [
    "http://127.0.0.1:8000/hook",
    "http://localhost/hook",
    "http://2130706433/hook",
    "http://0x7f000001/hook",
    "http://017700000001/hook",
    "http://user:pass@127.0.0.1/hook",
    "http://[::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://127.0.0.1:5432/",
    "http://169.254.169.254/latest/meta-data/",
    "http://10.0.0.7/hook",
    "http://192.168.1.1/hook",
    "http://172.16.0.1/hook",
    "http://100.64.0.1/hook",
    "http://0.0.0.0/hook",
    "http://[fd00:ec2::254]/hook",
    # NAT64 (security round 2): 10.0.0.1, the metadata address, loopback; local-use prefix
    "http://[64:ff9b::a00:1]/hook",
    "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/",
    "http://[64:ff9b::7f00:1]/hook",
    "http://[64:ff9b:1::a00:1]/hook",
    "http://[64:ff9b:1::808:808]/hook",
    "http://[2002:a00:1::]/hook",  # 6to4 of 10.0.0.1
    "http://example.com/a\r\nX-Injected: 1",
    "http://example.com/a b",
    "gopher://example.com/",
]


@pytest.mark.parametrize("url", REFUSED)
def test_the_policy_refuses_non_public_destinations(url):
    with pytest.raises(EgressRefused):
        resolve(url, AllowList.parse(""))


def test_submission_refuses_them_with_422(server: Server):
    with server.client() as c:
        for url in REFUSED:
            r = c.post("/v1/jobs", json=tiny_job(webhook_url=url))
            assert r.status_code == 422, (url, r.text)
            assert r.json()["errors"][0]["loc"] == "/webhook_url"


def test_nat64_of_a_public_address_is_judged_by_that_address():
    """Only checked, never contacted: resolve() of a literal makes no connection."""
    assert resolve("http://[64:ff9b::808:808]/hook", AllowList.parse("")).port == 80


def test_an_allow_list_admits_on_premises_receivers():
    allow = AllowList.parse("127.0.0.0/8, hooks.internal")
    assert resolve("http://127.0.0.1:9/x", allow).address == "127.0.0.1"
    assert resolve("http://localhost:9/x", AllowList.parse("localhost")).port == 9
    with pytest.raises(EgressRefused):
        resolve("http://10.1.2.3/x", allow)


class Recorder:
    """A loopback HTTP receiver that records requests; `silent` accepts connections
    and never answers."""

    def __init__(self, silent: bool = False):
        self.hits: list[bytes] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.silent, self.held = silent, []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.silent:
                self.held.append(conn)
                continue
            conn.settimeout(5)
            try:
                self.hits.append(conn.recv(65536))
                conn.sendall(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
            except OSError:
                pass
            conn.close()

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def test_delivery_checks_the_destination_again(tmp_path):
    """Allowed when the job was submitted, refused at delivery time (the policy
    changed, or DNS now answers with a private address): nothing is sent."""
    receiver = Recorder()
    allowed = make_settings(tmp_path, webhook_allow="127.0.0.1")
    gen = build_api(allowed)
    api = next(gen)
    try:
        job = api.post("/v1/jobs", json=tiny_job(webhook_url=receiver.url)).json()
        assert api.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
        strict = allowed.model_copy(update={"webhook_allow": ""})
        assert deliver_due(strict) == 1
        with session_scope(allowed.db_url) as session:
            row = session.scalar(select(WebhookDelivery).where(WebhookDelivery.job_id == job["id"]))
            assert row is not None and row.status == "failed"
            assert row.last_error.startswith("refused")
        assert receiver.hits == []
    finally:
        gen.close()
        receiver.close()


@pytest.fixture
def pg_server(tmp_path) -> Iterator[Server]:
    db = create_pg_database()
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{db}"
    upgrade(url)  # PostgreSQL is migrated on purpose (`kd migrate`), not by `kd serve`
    s = start_server(
        tmp_path,
        KD_DATABASE_URL=url,
        KD_LOCAL_WORKERS="0",
        KD_WEBHOOK_ALLOW="127.0.0.1",
        KD_WEBHOOK_TIMEOUT_S="30",
        KD_WEBHOOK_ATTEMPTS="1",
    )
    try:
        yield s
    finally:
        s.proc.stop()
        drop_pg_database(db)


def test_a_silent_receiver_holds_no_database_connection(pg_server: Server):
    """20 cancels whose webhooks go to a receiver that never answers: the cancels, the
    other tenant's reads and the outbox all go on (the deliveries wait in the loop,
    with no transaction open, at most KD_WEBHOOK_CONCURRENCY at a time)."""
    silent = Recorder(silent=True)
    try:
        attacker, victim = pg_server.client(), pg_server.tenant("victim")
        ids = [
            attacker.post("/v1/jobs", json=tiny_job(webhook_url=silent.url)).json()["id"]
            for _ in range(20)
        ]
        for job_id in ids:
            assert attacker.post(f"/v1/jobs/{job_id}/cancel", timeout=10).status_code == 202
        deadline = time.monotonic() + 30  # until the dispatcher is blocked on the receiver
        while not silent.held and time.monotonic() < deadline:
            time.sleep(0.05)
        assert silent.held
        for _ in range(10):
            assert victim.get("/v1/jobs", timeout=10).status_code == 200
        assert attacker.get("/healthz", timeout=10).status_code == 200
        assert len(silent.held) <= 4  # KD_WEBHOOK_CONCURRENCY's default
        with session_scope(pg_server.env["KD_DATABASE_URL"]) as session:
            rows = session.scalars(
                select(WebhookDelivery).where(WebhookDelivery.job_id.in_(ids))
            ).all()
        assert len(rows) == 20  # each cancel queued exactly one delivery
    finally:
        silent.close()


def test_the_libraries_telemetry_is_off_unless_the_operator_says_otherwise(tmp_path, monkeypatch):
    """Security round 2: the MLflow client tried to reach the internet for telemetry.
    The service's start (prepare: `kd serve`, and `kd worker`) turns it off for itself
    and the training processes it starts; an operator's own setting is kept."""
    from app.main import prepare
    from app.services.egress import QUIET_LIBRARIES

    for name in QUIET_LIBRARIES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DO_NOT_TRACK", "0")  # the operator's choice stands
    prepare(make_settings(tmp_path))
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert os.environ["HF_HUB_DISABLE_TELEMETRY"] == "1" and os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.environ["DO_NOT_TRACK"] == "0"
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.environ.get('MLFLOW_DISABLE_TELEMETRY'))"],
        capture_output=True,
        text=True,
    )
    assert child.stdout.strip() == "true"  # a training process inherits it
