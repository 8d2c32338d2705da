"""The start of `kd serve`: the port bound before anything else, and one block printed
when the service answers (not before): where it is, the dashboard, the key, what next."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from kdservice.cli.client_commands import CLIError

if TYPE_CHECKING:
    from app.settings import Settings

EXIT_USAGE = 2
ANSWER_WAIT_S = 600.0  # a first start imports torch and upgrades the database


def bind_listener(host: str, port: int) -> socket.socket:
    """The listening socket `kd serve` serves on, bound first: a port in use (another
    `kd serve`, say) is one line and exit 2, before a database or a job runner starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise CLIError(
                f"port {port} on {host} is already in use (another `kd serve`?): stop it, "
                "or choose another port with --port or KD_PORT",
                EXIT_USAGE,
            ) from None
        raise CLIError(f"cannot listen on {host}:{port}: {exc.strerror}", EXIT_USAGE) from None
    return sock


def local_url(settings: Settings) -> str:
    """The address to open from this host: a wildcard listen address is reached on
    loopback."""
    host = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(settings.host, settings.host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


def command_name() -> str:
    """How the user reaches this `kd`: its bare name when PATH finds this same file,
    else the path it was started by (`.venv/bin/kd` under `make run`)."""
    started = Path(sys.argv[0])
    found = shutil.which("kd")
    if found and started.exists() and Path(found).resolve() == started.resolve():
        return "kd"
    if started.name != "kd" or not started.exists():  # `python -m kdservice.cli`, say
        return "kd"
    relative = os.path.relpath(started)
    return str(started.resolve()) if relative.startswith("..") else relative


def start_block(settings: Settings, key_line: str) -> str:
    url = local_url(settings)
    mode = f"Celery via {settings.broker_url}" if settings.broker_url else "local executor"
    database = settings.db_url.split("@")[-1]
    kd = command_name()
    if Path("examples/quickstart_teacher.json").is_file():
        step = f"{kd} submit examples/quickstart_teacher.json --watch"
    else:
        step = f"{kd} jobs"
    lines = [
        f"kd: serving on {url} ({mode}, database {database})",
        f"  dashboard  {url}/",
        f"  API docs   {url}/docs",
        f"  API key    {key_line}",
        f"  next       {step}   (another terminal; Ctrl-C here stops the service)",
    ]
    return "\n".join(lines)


def announce_when_answering(settings: Settings, block: str) -> threading.Thread:
    """Print `block` once GET /healthz answers 200 on the served port (a daemon thread:
    it ends with the process if the service never comes up)."""

    def wait_then_print() -> None:
        # the standard library's client: no log line of its own beside the block
        from http.client import HTTPConnection
        from urllib.parse import urlsplit

        where = urlsplit(local_url(settings))
        deadline = time.monotonic() + ANSWER_WAIT_S
        while time.monotonic() < deadline:
            connection = HTTPConnection(where.hostname or "127.0.0.1", where.port, timeout=60)
            try:
                connection.request("GET", "/healthz")
                if connection.getresponse().status == 200:
                    print(block, file=sys.stderr, flush=True)
                    return
            except OSError:
                pass
            finally:
                connection.close()
            time.sleep(0.2)

    thread = threading.Thread(target=wait_then_print, name="kd-start-block", daemon=True)
    thread.start()
    return thread
