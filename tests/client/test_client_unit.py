"""The client's own logic against fake transports (unit tests: retries, idempotency,
SSE parsing and reconnect, download resume and digest check, config precedence).
The same calls against a real `kd serve` are in tests/e2e/test_cli_and_client.py."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import pytest

from kdservice.client import ApiError, Artifact, Client, DigestMismatch
from kdservice.client._core import SSEParser
from kdservice.client.config import resolve, write_config

JOB = {
    "id": "job_1",
    "name": "n",
    "kind": "train",
    "status": "queued",
    "attempt": 0,
    "max_attempts": 3,
    "created_at": "2026-01-01T00:00:00.000Z",
    "started_at": None,
    "finished_at": None,
    "queue_position": 1,
    "progress": {},
    "metrics": {},
    "error": None,
    "status_transitions": [],
    "retry_of": None,
    "resume_checkpoint_id": None,
    "spec": {},
    "report": None,
}


def client_for(handler, **kw) -> Client:  # type: ignore[no-untyped-def]
    return Client(
        "http://kd.test", "kd_key", transport=httpx.MockTransport(handler), backoff_s=0.001, **kw
    )


def test_create_retries_on_503_and_429_with_one_idempotency_key() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) == 1:
            return httpx.Response(503, json={"title": "Service Unavailable", "status": 503})
        if len(seen) == 2:
            return httpx.Response(429, headers={"Retry-After": "0"})
        return httpx.Response(201, json=JOB)

    job = client_for(handler).submit({"name": "n"})
    assert job.id == "job_1" and len(seen) == 3
    keys = {r.headers["Idempotency-Key"] for r in seen}
    assert len(keys) == 1 and keys.pop().startswith("kdclient-")
    assert all(r.headers["Authorization"] == "Bearer kd_key" for r in seen)


def test_gives_up_after_max_retries_with_the_problem() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"title": "Service Unavailable", "detail": "db down"})

    with pytest.raises(ApiError) as info:
        client_for(handler, max_retries=2).get("job_1")
    assert info.value.status == 503 and "db down" in str(info.value)


def test_problem_json_becomes_api_error_with_pointers() -> None:
    problem = {
        "type": "about:blank",
        "title": "Unprocessable Content",
        "status": 422,
        "detail": "the job spec is invalid",
        "errors": [{"loc": "/training/epochs", "msg": "must be >= 1"}],
    }

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            422, json=problem, headers={"content-type": "application/problem+json"}
        )

    with pytest.raises(ApiError) as info:
        client_for(handler).submit({"name": "x"})
    assert info.value.errors == problem["errors"]
    assert "/training/epochs: must be >= 1" in str(info.value)


def test_post_without_idempotency_key_is_not_retried_on_connection_errors() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise httpx.ConnectError("refused")

    with pytest.raises(httpx.ConnectError):
        client_for(handler).cancel("job_1")  # a POST: repeating it blindly is not safe
    assert len(calls) == 1
    calls.clear()
    with pytest.raises(httpx.ConnectError):
        client_for(handler, max_retries=3).get("job_1")  # a GET is retried
    assert len(calls) == 4


def test_sse_parser_reads_events_and_skips_comments() -> None:
    parser = SSEParser()
    lines = [
        "retry: 2000",
        "",
        ": heartbeat",
        "",
        "id: 7",
        "event: status",
        'data: {"status": "succeeded"}',
        "",
    ]
    events = [e for e in (parser.feed(line) for line in lines) if e is not None]
    assert [(e.seq, e.type, e.data) for e in events] == [(7, "status", {"status": "succeeded"})]
    assert events[0].is_terminal


def _stream(events: list[tuple[int, str, dict]]) -> bytes:
    return "".join(f"id: {s}\nevent: {t}\ndata: {json.dumps(d)}\n\n" for s, t, d in events).encode()


def test_events_reconnect_with_last_event_id_and_stop_at_terminal() -> None:
    all_events = [
        (1, "status", {"status": "queued"}),
        (2, "status", {"status": "running"}),
        (3, "progress", {"step": 1}),
        (4, "status", {"status": "succeeded"}),
    ]
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        last = int(request.headers["Last-Event-ID"])
        asked.append(request.headers["Last-Event-ID"])
        rest = [e for e in all_events if e[0] > last]
        # the first connection drops after two events, before the terminal one
        return httpx.Response(200, content=_stream(rest[:2] if last == 0 else rest))

    got = list(client_for(handler).events("job_1"))
    assert [e.seq for e in got] == [1, 2, 3, 4]
    assert asked == ["0", "2"]


class FakeArtifactServer:
    """Serves one artifact with Range support; can cut the body short once."""

    def __init__(self, blob: bytes, cut_at: int | None = None):
        self.blob, self.cut_at, self.ranges = blob, cut_at, []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        rng = request.headers.get("Range")
        self.ranges.append(rng)
        start = int(rng.split("=")[1].rstrip("-")) if rng else 0
        body = self.blob[start:]
        status = 206 if rng else 200
        if self.cut_at is not None:
            body, self.cut_at = body[: self.cut_at], None
            return httpx.Response(status, stream=_Broken(body))
        return httpx.Response(status, content=body)


class _Broken(httpx.SyncByteStream):
    def __init__(self, body: bytes):
        self.body = body

    def __iter__(self):  # type: ignore[no-untyped-def]
        yield self.body
        raise httpx.ReadError("connection reset")


def _artifact(blob: bytes) -> Artifact:
    return Artifact(
        id="art_1",
        job_id="job_1",
        name="student.safetensors",
        bytes=len(blob),
        sha256=hashlib.sha256(blob).hexdigest(),
        content_type="application/octet-stream",
        download_url="/v1/artifacts/art_1/content",
    )


def test_download_resumes_after_a_broken_connection(tmp_path: Path) -> None:
    blob = bytes(range(256)) * 4000
    server = FakeArtifactServer(blob, cut_at=100_000)
    path = client_for(server).download(_artifact(blob), tmp_path)
    assert path.read_bytes() == blob
    assert server.ranges == [None, "bytes=100000-"]
    assert not (tmp_path / "student.safetensors.part").exists()


def test_download_with_a_foreign_part_file_starts_over(tmp_path: Path) -> None:
    blob = b"x" * 5000
    (tmp_path / "student.safetensors.part").write_bytes(b"y" * 100)  # not a prefix
    server = FakeArtifactServer(blob)
    path = client_for(server).download(_artifact(blob), tmp_path)
    assert path.read_bytes() == blob
    assert server.ranges == ["bytes=100-", None]


def test_download_refuses_a_wrong_digest(tmp_path: Path) -> None:
    art = _artifact(b"the real bytes")
    with pytest.raises(DigestMismatch):
        client_for(FakeArtifactServer(b"other bytes!!!")).download(art, tmp_path)
    assert not (tmp_path / "student.safetensors").exists()
    assert not (tmp_path / "student.safetensors.part").exists()


def test_config_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KD_CONFIG", str(tmp_path / "config.json"))
    monkeypatch.setenv("KD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("KD_URL", raising=False)
    monkeypatch.delenv("KD_API_KEY", raising=False)
    assert resolve().api_key is None and resolve().url == "http://127.0.0.1:8000"
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "api_key").write_text("kd_local\n")
    assert resolve().api_key == "kd_local"  # the embedded default's saved key
    path = write_config("http://svc:9000/", "kd_saved")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert resolve().api_key == "kd_saved" and resolve().url == "http://svc:9000"
    monkeypatch.setenv("KD_API_KEY", "kd_env")
    monkeypatch.setenv("KD_URL", "http://env:1")
    assert (resolve().url, resolve().api_key) == ("http://env:1", "kd_env")
    assert resolve("http://arg", "kd_arg").api_key == "kd_arg"


def test_wait_times_out_on_a_job_whose_stream_only_sends_heartbeats() -> None:
    """The deadline is checked on every line (and bounds each read), not only when an
    event arrives: a silent queued job does not hold `wait` past its timeout."""
    import time as clock

    from kdservice.client import WaitTimeout

    def heartbeats():  # 40 heartbeats, 0.1 s apart, and no event
        for _ in range(40):
            clock.sleep(0.1)
            yield b": heartbeat\n\n"

    streams = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events/stream"):
            streams.append(request)
            if len(streams) > 1:  # a client that missed its deadline reconnects: refuse
                return httpx.Response(404, json={"title": "Not Found", "status": 404})
            return httpx.Response(
                200, headers={"content-type": "text/event-stream"}, content=heartbeats()
            )
        return httpx.Response(200, json=JOB)

    with client_for(handler) as kd, pytest.raises(WaitTimeout, match="within 1 s"):
        kd.wait("job_1", timeout_s=1)
    assert len(streams) == 1


def test_the_sync_and_async_clients_offer_the_same_calls() -> None:
    from kdservice.client import AsyncClient

    def public(cls: type) -> set[str]:
        return {n for n in dir(cls) if not n.startswith("_")}

    assert public(Client) - {"close"} == public(AsyncClient) - {"aclose"}


def test_get_sends_the_last_etag_and_keeps_its_copy_on_304() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.headers.get("If-None-Match") == '"r.7"':
            return httpx.Response(304, headers={"ETag": '"r.7"'})
        return httpx.Response(200, json={**JOB, "poll_after_s": 5.0}, headers={"ETag": '"r.7"'})

    client = client_for(handler)
    first = client.get("job_1")
    again = client.get("job_1")
    assert "If-None-Match" not in seen[0].headers
    assert seen[1].headers["If-None-Match"] == '"r.7"'
    assert again == first and again.poll_after_s == 5.0
    # another job has no ETag yet
    client.get("job_2")
    assert "If-None-Match" not in seen[2].headers


def test_a_changed_job_replaces_the_kept_copy() -> None:
    versions = iter([("queued", '"r.1"'), ("running", '"r.2"'), ("running", '"r.2"')])

    def handler(request: httpx.Request) -> httpx.Response:
        status, etag = next(versions)
        if request.headers.get("If-None-Match") == etag:
            return httpx.Response(304, headers={"ETag": etag})
        return httpx.Response(200, json={**JOB, "status": status}, headers={"ETag": etag})

    client = client_for(handler)
    assert [client.get("job_1").status for _ in range(3)] == ["queued", "running", "running"]
