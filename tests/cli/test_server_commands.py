"""The server-side commands on a fresh machine: `kd keys ...` before the first `kd serve`,
and `kd serve`'s log lines (readable on a terminal, JSON lines to a pipe)."""

from __future__ import annotations

import io
import json
import logging
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.logs import dict_config, log_format
from app.settings import Settings
from tests.app.conftest import create_pg_database, drop_pg_database
from tests.support.procs import free_port


def kd(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("KD_")}
    return subprocess.run(
        [sys.executable, "-m", "kdservice.cli", *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.integration
def test_keys_create_on_a_fresh_data_folder_upgrades_the_embedded_database(tmp_path):
    env = {"KD_DATA_DIR": str(tmp_path / "data"), "KD_DATABASE_URL": ""}
    created = kd("keys", "create", "--tenant", "x", env=env)
    assert created.returncode == 0, created.stderr
    key_id, plain = created.stdout.split()
    assert key_id.startswith("key_") and plain.startswith("kd_")
    listed = kd("keys", "list", env=env)
    assert listed.returncode == 0 and f"{key_id}\tx\t" in listed.stdout
    limits = kd("keys", "limits", "x", "--max-active-jobs", "3", env=env)
    assert limits.returncode == 0 and "max_active_jobs\t3\t(tenant)" in limits.stdout


@pytest.mark.integration
def test_keys_on_an_unmigrated_postgresql_say_what_to_run(tmp_path):
    name = create_pg_database()
    try:
        url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        env = {"KD_DATA_DIR": str(tmp_path / "data"), "KD_DATABASE_URL": url}
        result = kd("keys", "create", "--tenant", "x", env=env)
        assert result.returncode == 2
        assert result.stderr.strip() == (
            "kd: error: the database has no tables yet: run `kd migrate` first"
        )
        assert kd("migrate", env=env).returncode == 0
        assert kd("keys", "create", "--tenant", "x", env=env).returncode == 0
    finally:
        drop_pg_database(name)


class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def _emit(config: dict, message: str, **extra: object) -> str:
    formatter = logging.config.DictConfigurator(config).configure_formatter(  # type: ignore[attr-defined]
        config["formatters"]["kd"]
    )
    record = logging.LogRecord("kd.api", logging.INFO, __file__, 1, message, (), None)
    record.__dict__.update(extra)
    return formatter.format(record)


def test_log_format_follows_the_terminal_unless_forced():
    auto = Settings(log_format="auto")
    assert log_format(auto, _Stream(tty=True)) == "text"
    assert log_format(auto, _Stream(tty=False)) == "json"
    assert log_format(Settings(log_format="json"), _Stream(tty=True)) == "json"
    assert log_format(Settings(log_format="text"), _Stream(tty=False)) == "text"
    line = _emit(dict_config(auto, _Stream(tty=True)), "job started", job_id="job_1")
    assert " INFO " in line and line.rstrip().endswith("job started  [job=job_1]")
    entry = json.loads(_emit(dict_config(auto, _Stream(tty=False)), "job started"))
    assert entry["msg"] == "job started" and entry["level"] == "info"


def _read_until(fd: int, needle: bytes, timeout: float) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                seen += os.read(fd, 4096)
            except OSError:  # the terminal closed: the process ended
                break
    return seen


@pytest.mark.integration
def test_kd_serve_on_a_terminal_writes_readable_lines(tmp_path: Path):
    master, slave = pty.openpty()
    base = {k: v for k, v in os.environ.items() if not k.startswith("KD_")}
    env = {**base, "KD_DATA_DIR": str(tmp_path / "data"), "KD_DATABASE_URL": ""}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kdservice.cli", "serve", "--port", str(free_port())],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
    )
    os.close(slave)
    try:
        seen = _read_until(master, b"worker thread", 90).decode(errors="replace")
    finally:
        proc.terminate()
        proc.wait(30)
        os.close(master)
    line = next(ln for ln in seen.splitlines() if "worker thread" in ln)
    assert not line.lstrip().startswith("{"), line
    assert " INFO " in line and line.split()[0].count(":") == 2  # HH:MM:SS INFO message
