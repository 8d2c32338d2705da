"""Running the service's commands as real processes in tests."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

# for the tests of what the service records (the CLI, the client, the dashboard, claims,
# queues, events, restarts of the broker, the API or the database), not of the training
# process (kill, cancel by signal, parent death): each job trains in a thread of the
# `kd serve` or `kd worker` that claimed it (worker/launch.py), the same kdcore run and
# messages without a fresh interpreter's seconds of imports per job
TRAINING_IN_A_THREAD = {"KD_TRAINING_LAUNCH": "thread"}


def training_children() -> list[int]:
    """PIDs of `python -m worker.training_process` processes started by this process."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if b"worker.training_process" in cmdline and ppid == os.getpid():
            pids.append(int(proc.name))
    return pids


def wait_until(predicate, timeout: float, what: str, interval: float = 0.2) -> Any:
    """The predicate's first truthy value, polled until `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def free_port() -> int:
    """A port nothing listens on now, for a server that cannot be told to take port 0
    (moto, mlflow) or for an address that must refuse connections. `kd serve` takes
    port 0 instead (`serve` below): no window in which another process takes the port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    def __init__(
        self, args: list[str], env: dict[str, str], log: Path, command: list[str] | None = None
    ):
        """`kd ARGS` as this interpreter's module, or as `command` (an installed `kd`)."""
        self.log = log
        self.popen = subprocess.Popen(
            [*(command or [sys.executable, "-m", "kdservice.cli"]), *args],
            env={**os.environ, **env},
            stdout=log.open("wb"),  # noqa: SIM115 (closed with the process)
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()


SERVING = re.compile(r"kd: serving on (http://\S+)")


def serve(
    env: dict[str, str],
    log: Path,
    command: list[str] | None = None,
    port: int = 0,
    timeout: float = 120,
) -> tuple[Proc, str]:
    """`kd serve --port PORT` (0: the system picks a free one as it binds) and its base
    URL, once it answers: its start block, printed when it does, names the address."""
    proc = Proc(["serve", "--port", str(port)], env, log, command=command)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = SERVING.search(log.read_text(errors="replace"))
        if found:
            base = found.group(1)
            wait_ready(base, proc)
            return proc, base
        if proc.popen.poll() is not None:
            raise AssertionError(f"server exited:\n{log.read_text()}")
        time.sleep(0.2)
    proc.stop()
    raise AssertionError(f"server did not answer:\n{log.read_text()}")


def wait_ready(base: str, proc: Proc, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise AssertionError(f"server exited:\n{proc.log.read_text()}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"server not ready:\n{proc.log.read_text()}")


class CuttingProxy:
    """A TCP proxy on 127.0.0.1 that forwards to `port`, but closes the first `cuts`
    event-stream connections after `after_bytes` bytes of response: a real dropped
    connection in the middle of an SSE stream."""

    def __init__(self, port: int, after_bytes: int = 700, cuts: int = 3):
        import threading

        self.upstream, self.after_bytes, self.cuts_left = port, after_bytes, cuts
        self.cut = 0
        self.lock = threading.Lock()
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(64)
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        import threading

        upstream = socket.create_connection(("127.0.0.1", self.upstream))
        # a kept-alive connection may carry other requests first: arm the cut when a
        # stream request passes, counting from the response bytes sent so far
        state = {"sent": 0, "limit": None}

        def pump_up() -> None:
            try:
                while data := client.recv(65536):
                    if b"/events/stream" in data:
                        with self.lock:
                            if self.cuts_left > 0 and state["limit"] is None:
                                self.cuts_left -= 1
                                state["limit"] = state["sent"] + self.after_bytes
                    upstream.sendall(data)
            except OSError:
                pass

        threading.Thread(target=pump_up, daemon=True).start()
        try:
            while data := upstream.recv(65536):
                limit, sent = state["limit"], state["sent"]
                if limit is not None and sent + len(data) >= limit:
                    client.sendall(data[: limit - sent])
                    with self.lock:
                        self.cut += 1
                    break
                client.sendall(data)
                state["sent"] = sent + len(data)
        except OSError:
            pass
        finally:
            for s in (client, upstream):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def close(self) -> None:
        self.server.close()
