"""The server-side commands on a fresh machine: `kd keys ...` before the first `kd serve`,
and `kd serve`'s log lines (readable on a terminal, JSON lines to a pipe)."""

from __future__ import annotations

import io
import json
import logging
import os
import pty
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.logs import dict_config, log_format
from app.settings import Settings
from tests.app.conftest import create_pg_database, drop_pg_database


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


def test_keys_on_the_embedded_database_never_import_torch(tmp_path):
    """`kd keys` creates and upgrades the embedded SQLite without the app (whose job
    validation imports torch, seconds of a small command): -X importtime lists every
    module the command imported."""
    env = {
        "KD_DATA_DIR": str(tmp_path / "data"),
        "KD_DATABASE_URL": "",
        "PYTHONPROFILEIMPORTTIME": "1",
    }
    created = kd("keys", "create", "--tenant", "x", env=env)
    assert created.returncode == 0, created.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in created.stderr.splitlines()}
    assert "app.db.migrate" in imported  # it did upgrade the database here
    assert not {"torch", "fastapi", "app.main"} & imported


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
        [sys.executable, "-m", "kdservice.cli", "serve", "--port", "0"],
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


def _serve(data: Path, port: int) -> subprocess.Popen:
    base = {k: v for k, v in os.environ.items() if not k.startswith("KD_")}
    env = {**base, "KD_DATA_DIR": str(data), "KD_DATABASE_URL": "", "KD_LOG_FORMAT": "json"}
    return subprocess.Popen(
        [sys.executable, "-m", "kdservice.cli", "serve", "--port", str(port)],
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def _lines_until_the_start_block(proc: subprocess.Popen) -> tuple[list[str], int, int]:
    """stderr's lines up to the block's last line, the port the block names, and
    /healthz's status there the moment the block was printed."""
    assert proc.stderr is not None
    seen = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 0.5)
        if not ready:
            continue
        chunk = os.read(proc.stderr.fileno(), 65536)
        assert chunk, f"kd serve ended before its start block: {seen!r}"
        seen += chunk
        lines = seen.decode(errors="replace").splitlines()
        if seen.endswith(b"\n") and any(ln.lstrip().startswith("next ") for ln in lines):
            import httpx

            served = next(ln for ln in lines if ln.startswith("kd: serving on http://127.0.0.1:"))
            port = int(served.split()[3].rsplit(":", 1)[1])
            answered = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5, trust_env=False)
            return lines, port, answered.status_code
    raise AssertionError(f"no start block within 120 s: {seen!r}")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@pytest.mark.integration
def test_kd_serve_prints_one_start_block_once_it_answers_and_migrates_once(tmp_path: Path):
    """The first start on port 0 (a free one, which the block names), the second on the
    port the first was given, as a restart would."""
    data, asked = tmp_path / "data", 0
    for start in ("first", "second"):
        proc = _serve(data, asked)
        try:
            lines, port, health = _lines_until_the_start_block(proc)
        finally:
            _stop(proc)
        assert port != 0 and asked in (0, port)
        asked = port
        assert health == 200  # printed when the port answers, not before
        block = [ln for ln in lines if not ln.startswith("{")]
        assert block[0] == f"kd: serving on http://127.0.0.1:{port} " + (
            f"(local executor, database sqlite:///{data / 'kdservice.db'})"
        )
        url = f"http://127.0.0.1:{port}"
        assert block[1].split() == ["dashboard", f"{url}/"]
        assert block[2].split() == ["API", "docs", f"{url}/docs"]
        assert block[3].split()[:2] == ["API", "key"]
        assert block[-1].split()[0] == "next"
        assert "kd submit examples/quickstart_teacher.json --watch" in block[-1]  # run from ROOT
        upgrades = [ln for ln in lines if "database upgraded" in ln]
        alembic = [ln for ln in lines if "alembic" in ln]
        assert alembic == []
        if start == "first":  # one line for the upgrade; the new key shown once
            assert len(upgrades) == 1, lines
            assert (data / "api_key").read_text().strip() in "\n".join(block)
        else:  # already at head: no upgrade line; the key's file named, not the key
            assert upgrades == [], lines
            assert str(data / "api_key") in "\n".join(block)
            assert (data / "api_key").read_text().strip() not in "\n".join(block)


@pytest.mark.integration
def test_a_second_kd_serve_on_a_bound_port_says_so_in_one_line_and_starts_nothing(
    tmp_path: Path,
):
    data = tmp_path / "data"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = _serve(data, port)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    lines = err.decode().strip().splitlines()
    assert lines == [
        f"kd: error: port {port} on 127.0.0.1 is already in use (another `kd serve`?): "
        "stop it, or choose another port with --port or KD_PORT"
    ]
    assert not data.exists()  # no database made, no key, no job runner


@pytest.mark.parametrize("command", ["kd", "kdcore"])
def test_version_flags_print_the_installed_version(command: str):
    from importlib.metadata import version

    module = {"kd": "kdservice.cli", "kdcore": "kdcore.cli"}[command]
    out = subprocess.run(
        [sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{command} {version('kdservice')}"
