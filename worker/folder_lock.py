"""One writer per job folder on a host.

A job's attempts share its folder (`jobs_dir/<job id>`: checkpoints, outputs, logs). A
lease that expires while its training process still runs (a loaded machine, a stalled
database) lets the reaper requeue the job, and another executor slot may claim it
before the first supervisor notices, at its next heartbeat, and kills its process. Two
training processes in one folder then race over the same files (one renames the
other's `curves.tmp.png` away). An attempt therefore holds an exclusive `flock` on the
folder's lock file from before its process starts until that process has exited: the
training process inherits the lock's descriptor, so the lock outlives a supervisor that
died before its child. A later attempt waits for it, renewing its own lease meanwhile.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

LOCK_FILE = ".attempt.lock"


@contextlib.contextmanager
def folder_lock(
    folder: Path, keep_waiting: Callable[[], bool], poll_s: float = 0.2, name: str = LOCK_FILE
) -> Iterator[int | None]:
    """Hold `folder`'s lock: yields the lock's file descriptor (pass it to the child
    that writes the folder), or None if `keep_waiting()` said to give up first."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / name, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not keep_waiting():
                    yield None
                    return
                time.sleep(poll_s)
        yield fd
    finally:
        os.close(fd)  # the lock goes with the last descriptor: ours, or the child's
