"""The training process. The supervisor (worker.supervisor) starts it as a fresh interpreter
(`python -m worker.training_process`, the equivalent of multiprocessing's spawn: no inherited CUDA
state, its own process group so it can be killed whole), writes the job to its stdin
and reads one JSON message per line from its stdout (worker.protocol).

SIGTERM asks it to stop: the training loop checks the flag between steps. `train` is
the job itself, which worker.launch also runs in a thread (tests of what the service
records).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_CRASH, EXIT_INVALID = 0, 1, 3


def die_with_parent() -> None:
    """The child has its own process group (so cancel can kill it whole); make sure it
    does not outlive its supervisor either: Linux's parent-death signal, plus a check."""
    parent = os.getppid()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(EXIT_CRASH)

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(EXIT_CRASH)

    threading.Thread(target=watch, daemon=True).start()


def main() -> int:
    """The process around `train`: dies with its parent, reads the job from stdin, keeps
    stdout for the protocol (anything else printed goes to the log), stops on SIGTERM."""
    die_with_parent()
    payload = json.loads(sys.stdin.read())
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything else printed goes to the log, not into the protocol
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def send(message: dict[str, Any]) -> None:
        channel.write(json.dumps(message, default=str) + "\n")

    import torch

    torch.set_num_threads(payload["threads"])  # the job's share of the host's cores
    return train(payload, send, stop.is_set)


def _reporter(
    send: Callable[[dict[str, Any]], None],
    should_stop: Callable[[], bool],
    host: dict[str, Any] | None,
    reports_job: bool,
) -> Any:
    """kdcore's callbacks that tell the supervisor (see `train`)."""
    from kdcore.engine.callbacks import Callbacks, Progress
    from worker import protocol

    class Reporter(Callbacks):
        def on_step(self, p: Progress) -> None:
            if reports_job:
                send(protocol.progress(p, epoch_end=False))

        def on_epoch_end(self, p: Progress) -> None:
            if reports_job:
                send(protocol.progress(p, epoch_end=True))
            if host is not None:
                send(protocol.host_rate(host, p))

        def on_checkpoint(self, path: Path, p: Progress) -> None:
            send(protocol.checkpoint(path, p))

        def on_trial_end(self, trial: dict[str, Any]) -> None:
            send(protocol.trial(trial))

        def should_stop(self) -> bool:
            return should_stop()

    return Reporter()


def train(
    payload: dict[str, Any],
    send: Callable[[dict[str, Any]], None],
    should_stop: Callable[[], bool],
    host: dict[str, Any] | None = None,
    reports_job: bool = True,
) -> int:
    """Run the job with kdcore, telling the supervisor through `send`; returns the exit
    code. The same in a process (main) and in a thread (worker.launch). A rank of a
    multi-host job (worker.node_process) gives `host` (its node rank, address and share
    of the ranks): its epochs also report the host's throughput; only global rank 0
    `reports_job` (progress, checkpoints, the report)."""
    import kdcore
    from worker import protocol

    reporter = _reporter(send, should_stop, host, reports_job)
    try:
        report = kdcore.run(
            payload["spec"],
            payload["out_dir"],
            reporter,
            resume_from=payload.get("resume_from"),
            teacher_cache=payload.get("teacher_cache"),
        )
    except kdcore.Cancelled:
        if reports_job:
            send(protocol.cancelled())
        return EXIT_OK
    except (kdcore.KDError, FileNotFoundError) as exc:
        send(protocol.error("invalid", str(exc)))
        return EXIT_INVALID
    except Exception as exc:  # reported to the supervisor, which decides on a retry
        # the message first: the log may sit on the very disk that just filled up
        send(protocol.error("crash", f"{type(exc).__name__}: {exc}"))
        with contextlib.suppress(OSError):
            traceback.print_exc()
        return EXIT_CRASH
    if reports_job:
        send(protocol.done(report))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
