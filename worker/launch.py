"""How the supervisor starts a job's training: the one seam between worker.supervisor
and worker.training_process.

`process` (the default, and what every deployment runs): a fresh interpreter in its
own process group, which cancel can stop with SIGTERM and kill whole, which dies with
its supervisor, and whose crash or memory never touches the worker. `thread`: the same
training (worker.training_process.train, the same messages) in a thread of this
process; it saves the ~9 s a new interpreter spends importing torch, and is for tests
of what the service records (settings `training_launch`). It cannot be killed: a kill
asks it to stop and waits. Tests of the process itself (kill, cancel grace, timeouts,
parent death) use `process`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from typing import IO, Any, Protocol

LAUNCHES = ("process", "thread")


class Child(Protocol):
    """A started training: its messages (one JSON object per line) on `stdout`."""

    pid: int
    stdout: IO[bytes]

    def poll(self) -> int | None: ...
    def stop(self) -> None: ...  # please stop between steps (a checkpoint follows)
    def kill(self) -> None: ...  # stop now; returns when it has ended
    def exit_code(self) -> int: ...


class _Process:
    def __init__(
        self,
        payload: dict[str, Any] | None,
        log_file: IO[bytes],
        lock_fd: int,
        argv: list[str] | None = None,
        env: dict[str, str] | None = None,
    ):
        self.proc = subprocess.Popen(
            argv or [sys.executable, "-m", "worker.training_process"],
            # OpenMP sizes its pool from this at start: no oversubscribed first op
            env=env or {**os.environ, "OMP_NUM_THREADS": str((payload or {})["threads"])},
            stdin=subprocess.PIPE if payload is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log_file,
            start_new_session=True,
            pass_fds=(lock_fd,),  # the folder stays locked until the child is gone
        )
        assert self.proc.stdout is not None
        if payload is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps(payload).encode())
            self.proc.stdin.close()
        self.pid, self.stdout = self.proc.pid, self.proc.stdout

    def poll(self) -> int | None:
        return self.proc.poll()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def exit_code(self) -> int:
        return self.proc.wait()


class _Thread:
    def __init__(self, payload: dict[str, Any]):
        from worker.training_process import train

        read_end, write_end = os.pipe()
        self.stdout: IO[bytes] = os.fdopen(read_end, "rb")
        self.pid = os.getpid()
        self.returncode: int | None = None
        self._stop = threading.Event()
        channel = os.fdopen(write_end, "w", buffering=1)

        def send(message: dict[str, Any]) -> None:
            channel.write(json.dumps(message, default=str) + "\n")

        def body() -> None:
            try:
                self.returncode = train(payload, send, self._stop.is_set)
            finally:
                channel.close()  # the supervisor's reader sees the end of the output

        self.thread = threading.Thread(target=body, name="training", daemon=True)
        self.thread.start()

    def poll(self) -> int | None:
        return None if self.thread.is_alive() else self.returncode

    def stop(self) -> None:
        self._stop.set()

    def kill(self) -> None:
        self._stop.set()
        self.thread.join()

    def exit_code(self) -> int:
        self.thread.join()
        return self.returncode if self.returncode is not None else 1


def launch(how: str, payload: dict[str, Any], log_file: IO[bytes], lock_fd: int) -> Child:
    """Start the training of `payload` (spec, out_dir, resume_from, threads,
    teacher_cache) the way settings `training_launch` says."""
    if how == "thread":
        return _Thread(payload)
    return _Process(payload, log_file, lock_fd)


def launch_agent(argv: list[str], env: dict[str, str], log_file: IO[bytes], lock_fd: int) -> Child:
    """Start one host's torchrun agent of a multi-host job (worker.gang): always a
    process group of its own (agent and ranks), which kill ends whole."""
    return _Process(None, log_file, lock_fd, argv=argv, env=env)
