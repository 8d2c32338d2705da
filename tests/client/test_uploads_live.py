"""Uploads in parts from the Python client and `kd files upload`, against a real
`kd serve` (small parts: KD_UPLOAD_PART_BYTES=64 KiB): an interrupted upload resumes
and sends only what the service lacks; the service checks the whole file's sha256."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kdservice.client import Client
from tests.support.procs import serve

pytestmark = pytest.mark.integration  # a real server process


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    workdir = tmp_path_factory.mktemp("uploads")
    env = {
        "KD_DATA_DIR": str(workdir / "data"),
        "KD_DATABASE_URL": "",
        "KD_BROKER_URL": "",
        "KD_UPLOAD_PART_BYTES": str(64 * 1024),
    }
    proc, url = serve(env, workdir / "serve.log")
    try:
        yield url, (workdir / "data" / "api_key").read_text().strip(), workdir
    finally:
        proc.stop()


def _archive(path: Path, seed: int) -> Path:
    """A ~300 KB imagefolder zip (random images: they do not compress)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for i in range(60):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(buf, "PNG")
            z.writestr(f"{'cat' if i % 2 else 'dog'}/{i}.png", buf.getvalue())
    path.write_bytes(out.getvalue())
    return path


def _cut_after(parts: int):
    seen: list[int] = []

    def on_progress(done: int, total: int) -> None:
        seen.append(done)
        if len(seen) == parts:
            raise KeyboardInterrupt  # ^C, or a dropped connection

    return on_progress


def _held_parts(client: Client, state: Path) -> int:
    (remembered,) = state.iterdir()
    upload_id = json.loads(remembered.read_text())["id"]
    return len(client.request("GET", f"/v1/uploads/{upload_id}").json()["received"])


def test_the_client_resumes_and_sends_only_the_missing_parts(server, tmp_path):
    url, key, _ = server
    local = _archive(tmp_path / "pets.zip", 0)
    state = tmp_path / "state"
    with Client(url, key) as client:
        with pytest.raises(KeyboardInterrupt):
            client.upload_in_parts(local, "dataset", _cut_after(2), state_dir=state)
        assert _held_parts(client, state) == 2
        progress: list[int] = []
        info = client.upload_in_parts(
            local, "dataset", lambda done, _: progress.append(done), state_dir=state
        )
    assert info.sha256 == hashlib.sha256(local.read_bytes()).hexdigest()
    assert info.bytes == local.stat().st_size and progress[-1] == info.bytes
    assert list(state.iterdir()) == []  # forgotten once complete


def test_kd_files_upload_resumes_an_interrupted_upload(server, tmp_path):
    url, key, _ = server
    local = _archive(tmp_path / "more-pets.zip", 1)
    cache = tmp_path / "cache"
    with Client(url, key) as client, pytest.raises(KeyboardInterrupt):
        client.upload_in_parts(local, "dataset", _cut_after(3), state_dir=cache / "kd/uploads")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "kdservice.cli",
            "--url",
            url,
            "--key",
            key,
            "files",
            "upload",
            "--parts",
            "--purpose",
            "dataset",
            str(local),
        ],
        env={**os.environ, "XDG_CACHE_HOME": str(cache)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    file_id = done.stdout.strip()
    with Client(url, key) as client:
        stored = client.request("GET", f"/v1/files/{file_id}").json()
    assert stored["sha256"] == hashlib.sha256(local.read_bytes()).hexdigest()
    assert list((cache / "kd/uploads").iterdir()) == []


def test_the_async_client_resumes_too(server, tmp_path):
    import asyncio

    from kdservice.client import AsyncClient

    url, key, _ = server
    local = _archive(tmp_path / "async-pets.zip", 2)
    state = tmp_path / "state"

    async def go() -> tuple[int, object]:
        async with AsyncClient(url, key) as client:
            with pytest.raises(KeyboardInterrupt):
                await client.upload_in_parts(local, "dataset", _cut_after(1), state_dir=state)
            with Client(url, key) as sync_client:
                held = _held_parts(sync_client, state)
            return held, await client.upload_in_parts(local, "dataset", state_dir=state)

    held, info = asyncio.run(go())
    assert held == 1
    assert info.sha256 == hashlib.sha256(local.read_bytes()).hexdigest()  # type: ignore[attr-defined]


def _kd(url: str, key: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "kdservice.cli", "--url", url, "--key", key, *args]
    return subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=120)


def test_kd_credentials_store_a_secret_that_no_command_prints_again(server, tmp_path):
    """`kd credentials put NAME < secret`, list, delete; the clients' methods; the
    secret is in no output and not in the server's log."""
    import asyncio

    from kdservice.client import AsyncClient

    url, key, workdir = server
    secret = "sk-cli-3e5d9a0b7c1f"
    put = _kd(url, key, "credentials", "put", "vllm", stdin=secret + "\n")
    assert put.returncode == 0, put.stderr
    listed = _kd(url, key, "credentials", "list", "--json")
    assert [c["name"] for c in json.loads(listed.stdout)] == ["vllm"]
    with Client(url, key) as client:
        assert client.put_credential("other", secret + "2").name == "other"
        assert [c.name for c in client.credentials()] == ["other", "vllm"]

    async def names() -> list[str]:
        async with AsyncClient(url, key) as client:
            await client.delete_credential("other")
            return [c.name for c in await client.credentials()]

    assert asyncio.run(names()) == ["vllm"]
    refused = _kd(url, key, "credentials", "put", "bad name", stdin=secret)
    assert refused.returncode != 0 and secret not in refused.stdout + refused.stderr
    deleted = _kd(url, key, "credentials", "delete", "vllm")
    assert deleted.returncode == 0, deleted.stderr
    assert json.loads(_kd(url, key, "credentials", "list", "--json").stdout) == []
    for done in (put, listed, deleted):
        assert secret not in done.stdout + done.stderr
    for path in workdir.rglob("*"):  # the server's log, its database, its files
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
