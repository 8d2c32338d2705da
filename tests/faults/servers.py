"""A Redis and a PostgreSQL of the fault tests' own, on ports of their own: the tests
restart them without touching the servers the rest of the suite (and the host) use."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.procs import wait_until


def _pg_bin() -> Path:
    """The newest PostgreSQL's programs (Debian keeps them per major version)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
    assert found, "PostgreSQL's programs are not under /usr/lib/postgresql"
    return found[-1]


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class OwnRedis:
    """redis-server in the foreground, as a child of this test; restart keeps its port.
    A port another process holds makes redis exit at once: the next one is tried."""

    def __init__(self, first_port: int = 16379, listen: tuple[str, ...] = ("127.0.0.1",)) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.listen = listen  # more than loopback: the test's own hosts (tests.support.netns)
        for port in range(first_port, first_port + 200):
            if not _port_taken(port) and self._start(port):
                self.port = port
                return
        raise AssertionError("no port for a Redis of the fault tests' own")

    def _start(self, port: int) -> bool:
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", *self.listen, "--port", str(port)]
            + ["--save", "", "--appendonly", "no", "--protected-mode", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False  # the port was taken after all
            if _port_taken(port):
                return True
            time.sleep(0.05)
        self.stop()
        return False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # SIGKILL: what is queued is gone, as in a crash
            self.proc.wait(30)

    def restart(self) -> None:
        self.stop()
        wait_until(lambda: not _port_taken(self.port), 10, "the old Redis to let go of its port")
        assert self._start(self.port), "redis did not come back on its port"


class OwnPostgres:
    """A PostgreSQL cluster in a temporary folder (initdb, trust auth), on a port of its
    own. As root, the server runs as the `postgres` user, which PostgreSQL requires."""

    def __init__(
        self,
        first_port: int = 15432,
        listen: tuple[str, ...] = ("127.0.0.1",),
        trust: str | None = None,
    ) -> None:
        """`listen`: its addresses; `trust`: a subnet (the test's own hosts, from
        tests.support.netns) that may connect besides loopback."""
        self.folder = Path(tempfile.mkdtemp(prefix="kd-faults-pg-"))
        self.listen = listen
        self.data = self.folder / "data"
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        self._as_server(
            [str(_pg_bin() / "initdb"), "-D", str(self.data), "-U", "postgres"]
            + ["--auth=trust", "--no-sync"]
        )
        if trust is not None:
            with (self.data / "pg_hba.conf").open("a") as hba:
                hba.write(f"host all all {trust} trust\n")
        for port in range(first_port, first_port + 200):
            if _port_taken(port):
                continue
            self.port = port
            if self._pg_ctl("start", check=False) == 0:
                return
        raise AssertionError("no port for a PostgreSQL of the fault tests' own")

    def _as_server(self, args: list[str], check: bool = True) -> int:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        done = subprocess.run(
            prefix + args, capture_output=True, text=True, timeout=120, cwd=self.folder
        )
        if check and done.returncode != 0:
            raise AssertionError(f"{args[0]} failed: {done.stderr}")
        return done.returncode

    def _pg_ctl(self, action: str, check: bool = True) -> int:
        listen = ",".join(self.listen)
        options = f"-p {self.port} -c listen_addresses={listen} -k {self.folder} -c fsync=off"
        return self._as_server(
            [str(_pg_bin() / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60", "-o", options]
            + ["-l", str(self.folder / "server.log"), action],
            check=check,
        )

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def restart(self) -> None:
        self._pg_ctl("restart")

    def close(self) -> None:
        self._as_server(
            [str(_pg_bin() / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
            check=False,
        )
        shutil.rmtree(self.folder, ignore_errors=True)
