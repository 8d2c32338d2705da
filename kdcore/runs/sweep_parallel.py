"""A sweep's trials several at once (`resources.gpus: N` with a `sweep`): up to N trials
run side by side, each in its own spawned interpreter on its own device (GPU i, or on
the CPU a share of the job's threads). The calling process keeps the callbacks: each
child relays its progress and checkpoints through a queue, and a stop asked of the
caller reaches every child through one event, so cancel works as for one process.

Each trial writes its own folder (kdcore.image.run.run_local); the caller reads the
finished trial's report.json from there.
"""

from __future__ import annotations

import contextlib
import queue as queue_module
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

from kdcore.engine.callbacks import Callbacks, Progress
from kdcore.errors import Cancelled, SpecError
from kdcore.image.run import run_local
from kdcore.spec import JobSpec

EXIT_CANCELLED = 3
POLL_S = 0.2


@dataclass
class TrialRun:
    index: int
    spec: JobSpec
    folder: Path
    resume: Path | None
    callbacks: Callbacks  # the caller's, for this trial


class _Relay(Callbacks):
    def __init__(self, index: int, messages: Any, stop: Any):
        self.index, self.messages, self.stop = index, messages, stop

    def on_step(self, progress: Progress) -> None:
        self.messages.put((self.index, "step", progress.to_dict(), None))

    def on_epoch_end(self, progress: Progress) -> None:
        self.messages.put((self.index, "epoch", progress.to_dict(), None))

    def on_checkpoint(self, path: Path, progress: Progress) -> None:
        self.messages.put((self.index, "checkpoint", progress.to_dict(), str(path)))

    def should_stop(self) -> bool:
        return bool(self.stop.is_set())


def _child(
    slot: int,
    threads: int,
    index: int,
    spec: dict[str, Any],
    folder: str,
    resume: str | None,
    keep: int | None,
    cache: str | None,
    messages: Any,
    stop: Any,
) -> None:
    job = JobSpec.model_validate(spec)
    if job.training.device != "cpu" and torch.cuda.is_available():
        torch.cuda.set_device(slot)  # training.device "cuda" is the current device
    else:
        torch.set_num_threads(threads)  # the job's cores, split between its trials
    try:
        run_local(
            job,
            Path(folder),
            _Relay(index, messages, stop),
            resume,
            keep,
            Path(cache) if cache else None,
        )
    except Cancelled:
        sys.exit(EXIT_CANCELLED)


def run_at_once(
    runs: list[TrialRun],
    slots: int,
    keep_checkpoints: int | None,
    teacher_cache: Path | None,
    should_stop: Callable[[], bool],
    on_done: Callable[[TrialRun], None],
) -> None:
    """Run every trial, at most `slots` at a time; `on_done` after each one ends well.
    Raises Cancelled when a stop was asked, RuntimeError when a trial crashed."""
    on_gpu = any(run.spec.training.device != "cpu" for run in runs)
    if on_gpu and torch.cuda.is_available() and torch.cuda.device_count() < slots:
        have = torch.cuda.device_count()
        raise SpecError([("/resources/gpus", f"{slots} GPUs asked, {have} here")])
    pool = _Pool(slots, keep_checkpoints, teacher_cache)
    pending = list(runs)
    by_index = {run.index: run for run in runs}
    try:
        while pool.running or (pending and not pool.stop.is_set()):
            pool.fill(pending)
            _relay(pool.messages, by_index)
            if should_stop():
                pool.stop.set()
            for run in pool.reap(by_index):
                on_done(run)
    finally:
        pool.kill()
    if pool.failure is not None:
        raise RuntimeError(pool.failure)
    if pool.stop.is_set():
        raise Cancelled("stopped on request")


class _Pool:
    """The children: one per slot (device) at most, a queue and a stop event shared."""

    def __init__(self, slots: int, keep: int | None, cache: Path | None):
        self.ctx = mp.get_context("spawn")
        self.messages, self.stop = self.ctx.Queue(), self.ctx.Event()
        self.slots, self.keep, self.cache = slots, keep, cache
        self.threads = max(1, torch.get_num_threads() // slots)
        self.running: dict[int, tuple[Any, TrialRun]] = {}  # slot -> (process, run)
        self.failure: str | None = None

    def fill(self, pending: list[TrialRun]) -> None:
        """Start the next trials on the free slots, unless stopping."""
        for slot in range(self.slots):
            if slot in self.running or not pending or self.stop.is_set():
                continue
            run = pending.pop(0)
            args = (
                slot,
                self.threads,
                run.index,
                run.spec.model_dump(mode="json"),
                str(run.folder),
                str(run.resume) if run.resume else None,
                self.keep,
                str(self.cache) if self.cache else None,
                self.messages,
                self.stop,
            )
            process = self.ctx.Process(target=_child, args=args, daemon=True)
            process.start()
            self.running[slot] = (process, run)

    def reap(self, by_index: dict[int, TrialRun]) -> list[TrialRun]:
        """The trials that ended well since the last call; a crash stops the others."""
        done = []
        for slot, (process, run) in list(self.running.items()):
            if process.is_alive():
                continue
            process.join()
            _relay(self.messages, by_index, wait=False)  # what it said before it ended
            del self.running[slot]
            if process.exitcode == 0:
                done.append(run)
            elif process.exitcode != EXIT_CANCELLED and self.failure is None:
                self.failure = f"trial {run.index} exited with code {process.exitcode}"
                self.stop.set()  # the others stop at their next step
        return done

    def kill(self) -> None:
        for process, _ in self.running.values():
            with contextlib.suppress(Exception):
                process.kill()
                process.join(10)


def _relay(messages: Any, by_index: dict[int, TrialRun], wait: bool = True) -> None:
    """Hand the children's messages to their trials' callbacks, for up to POLL_S."""
    timeout: float | None = POLL_S if wait else None
    while True:
        try:
            index, kind, progress, path = (
                messages.get(timeout=timeout) if timeout else messages.get_nowait()
            )
        except queue_module.Empty:
            return
        timeout = None  # after the first message, take what is there and go
        callbacks = by_index[index].callbacks
        p = Progress.from_dict(progress)
        if kind == "step":
            callbacks.on_step(p)
        elif kind == "epoch":
            callbacks.on_epoch_end(p)
        else:
            callbacks.on_checkpoint(Path(path), p)
