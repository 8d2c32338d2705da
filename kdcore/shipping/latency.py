"""CPU latency that can be believed: the models of a report timed in the same window,
interleaved (teacher, student, student, teacher, ...), so a load that comes and goes
falls on both; repeated until the spread is small or a time cap is hit; reported with
its median, interquartile range and number of runs, and marked `noisy` when the spread
stayed wide or other work was competing for the cores. A gate or sweep limit that reads
a noisy figure says so (kdcore.shipping.readiness, kdcore.runs.sweep) rather than trusting it.

The measurement runs on the job's threads (`torch.get_num_threads()`: the worker sets
the job's share of the host's cores before anything runs).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

MIN_ROUNDS = 10
MAX_ROUNDS = 200
TIME_CAP_S = 1.0  # per batch size, all models together
STEADY_SPREAD = 0.10  # stop early once every model's IQR is within 10% of its median,
SETTLE_ROUNDS = 30  # or, after this many rounds (the median of 30 is a fair estimate),
SETTLED_SPREAD = 0.25  # within 25%
FEWEST_ROUNDS = 3  # a model so slow that the cap comes first: at least this many
# noisy at the end: an IQR over half the median, and over 50 us (below that the
# timer's and Python's own jitter dominate, and no latency limit is that fine)
NOISY_SPREAD = 0.5
NOISY_FLOOR_MS = 0.05
WARMUP = 2  # allocator, oneDNN primitive caches, onnxruntime's first run

Forward = Callable[[], Any]


def runnable_tasks() -> int | None:
    """Tasks the kernel has running or ready to run, host-wide (Linux /proc/stat)."""
    try:
        with open("/proc/stat", "rb") as fh:
            for line in fh:
                if line.startswith(b"procs_running"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _spread(times: list[float]) -> tuple[float, float]:
    """(median, interquartile range) in milliseconds."""
    q1, median, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return median, q3 - q1


def _steady(times: dict[str, list[float]], rounds: int) -> bool:
    """Every model's spread small enough to stop: relative to its median, or under the
    timer's own jitter for a model that runs in microseconds."""
    spread = STEADY_SPREAD if rounds < SETTLE_ROUNDS else SETTLED_SPREAD
    return all(
        iqr <= max(spread * median, NOISY_FLOOR_MS / 2)
        for median, iqr in map(_spread, times.values())
    )


def measure(forwards: dict[str, Forward], time_cap_s: float = TIME_CAP_S) -> dict[str, Any]:
    """Time each forward, interleaved, until steady or `time_cap_s`: per name its
    `median_ms`, `iqr_ms` and `runs`; then `noisy` (with `why`), `cores` and the median
    number of runnable tasks seen between rounds."""
    times, tasks = _timed(forwards, time_cap_s)
    out: dict[str, Any] = {}
    why = []
    for name, samples in times.items():
        median, iqr = _spread(samples)
        out[name] = {"median_ms": round(median, 4), "iqr_ms": round(iqr, 4), "runs": len(samples)}
        if iqr > max(NOISY_SPREAD * median, NOISY_FLOOR_MS):
            why.append(f"{name}'s spread (IQR {iqr:.3g} ms) is over half its median")
        elif len(samples) < MIN_ROUNDS:
            why.append(f"{name} ran {len(samples)} times in the {time_cap_s:g} s allowed")
    cores = os.cpu_count() or 1
    busy = statistics.median(tasks) if tasks else None
    if busy is not None and busy > cores:
        why.append(f"other work was running: {busy:g} runnable tasks on {cores} cores")
    out.update(noisy=bool(why), cores=cores, runnable_tasks=busy)
    if why:
        out["why"] = "; ".join(why)
    return out


def _timed(
    forwards: dict[str, Forward], time_cap_s: float
) -> tuple[dict[str, list[float]], list[int]]:
    """The rounds: each forward once a round, the order reversed every other round;
    the milliseconds of each, and the runnable tasks seen after each round."""
    times: dict[str, list[float]] = {name: [] for name in forwards}
    tasks: list[int] = []
    order = list(forwards.items())
    with torch.inference_mode():
        for run in forwards.values():
            for _ in range(WARMUP):
                run()
        start = time.perf_counter()
        for r in range(MAX_ROUNDS):
            for name, run in order if r % 2 == 0 else order[::-1]:  # neither always first
                t = time.perf_counter()
                run()
                times[name].append((time.perf_counter() - t) * 1000)
            seen = runnable_tasks()
            if seen is not None:
                tasks.append(seen)
            rounds, late = r + 1, time.perf_counter() - start > time_cap_s
            if rounds >= MIN_ROUNDS and (late or _steady(times, rounds)):
                break
            if late and rounds >= FEWEST_ROUNDS:  # too slow for MIN_ROUNDS: said in why
                break
    return times, tasks


def model_forwards(
    models: dict[str, torch.nn.Module], input_shape: tuple[int, ...], batch: int
) -> dict[str, Forward]:
    """One forward pass per model on a random batch, on the CPU, in eval mode."""
    x = torch.randn(batch, *input_shape)

    def forward(model: torch.nn.Module) -> Forward:
        model.to("cpu").eval()
        return lambda: model(x)

    return {name: forward(model) for name, model in models.items()}


def measure_models(
    models: dict[str, torch.nn.Module], input_shape: tuple[int, ...]
) -> dict[str, Any]:
    """The report's `latency`: batch 1 and batch 64, each measured as one window over
    every model; `threads` is what the measurement ran on."""
    return {
        "threads": torch.get_num_threads(),
        "batch1": measure(model_forwards(models, input_shape, 1)),
        "batch64": measure(model_forwards(models, input_shape, 64)),
    }
