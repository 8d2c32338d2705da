"""A real `kd serve` with several tenants, for the attacks in this folder.

Every request goes to 127.0.0.1. Tests of the URL policy only submit URLs that must be
refused; nothing is ever sent to them (the policy refuses them before any connection).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.support.procs import Proc, serve


@dataclass
class Server:
    url: str
    env: dict[str, str]
    data: Path
    proc: Proc
    keys: dict[str, str] = field(default_factory=dict)

    def client(self, tenant: str = "default", **kw) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.keys[tenant]}"} if tenant else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, **kw)

    def kd(self, *args: str) -> str:
        r = subprocess.run(
            [sys.executable, "-m", "kdservice.cli", *args],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        return r.stdout

    def tenant(self, name: str, *limits: str) -> httpx.Client:
        """A new tenant (and its key), with `kd keys limits` options if given."""
        self.keys[name] = self.kd("keys", "create", "--tenant", name).split()[1]
        if limits:
            self.kd("keys", "limits", name, *limits)
        return self.client(name)


def start_server(tmp: Path, umask: int | None = None, **env: str) -> Server:
    key = "kd_" + secrets.token_urlsafe(24)
    full = {
        "KD_DATA_DIR": str(tmp / "data"),
        "KD_DATABASE_URL": "",
        "KD_BROKER_URL": "",
        "KD_BOOTSTRAP_API_KEY": key,
        "KD_AUTH_CACHE_S": "0",
        "KD_LOG_FORMAT": "text",
        **env,
    }
    old = os.umask(umask) if umask is not None else None
    try:
        proc, url = serve(full, tmp / "server.log")
    finally:
        if old is not None:
            os.umask(old)
    return Server(url, full, tmp / "data", proc, {"default": key})


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    """Jobs stay queued (no executor threads), archives are capped at 64 MiB, and the
    pool `kd.fair` exists for the fair-share test."""
    s = start_server(
        tmp_path_factory.mktemp("secure"),
        KD_LOCAL_WORKERS="0",
        KD_MAX_ARCHIVE_UNPACKED_BYTES=str(64 * 1024**2),
        KD_POOLS="kd,kd.fair",
    )
    yield s
    s.proc.stop()
