"""The messages between the supervisor (worker.supervisor) and the training process
(worker.training_process), one JSON object a line. They are built here, and the job
row's progress is read from them here (`stored_progress`, from Progress's own fields),
so a new Progress field needs no change elsewhere; the supervisor dispatches on `type`
(Supervisor._take):

    {"type": "progress" | "epoch", ...}   kdcore's Progress, as Progress.to_dict gives it
    {"type": "checkpoint", "path", "epoch", "step", "phase"}  after the atomic rename
    {"type": "trial", ...}                a sweep's trial, recorded (kdcore.runs.sweep)
    {"type": "host", "node_rank", "host", "epoch", "step", "rate", "unit"}
                                          a host's throughput (multi-host jobs: worker.gang)
    {"type": "done", "report"} | {"type": "cancelled"} | {"type": "error", "kind", "message"}
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any, Literal

from kdcore.engine.callbacks import Progress

Message = dict[str, Any]
ENDINGS = ("done", "cancelled", "error")  # the last word of a training process
ErrorKind = Literal["invalid", "crash"]  # a job that cannot run / a failure worth a retry

# what the job row keeps of the newest progress: Progress's fields, whose model the
# figures are, and the baseline's own validation figures beside the student's
STORED_PROGRESS = (
    *(f.name for f in fields(Progress)),
    "model",
    "stage",
    "baseline_metrics",
)


def progress(p: Progress, *, epoch_end: bool) -> Message:
    return {"type": "epoch" if epoch_end else "progress", **p.to_dict()}


def checkpoint(path: Path, p: Progress) -> Message:
    return {
        "type": "checkpoint",
        "path": str(path),
        "epoch": p.epoch,
        "step": p.step,
        "phase": p.phase,
    }


def host_rate(host: dict[str, Any], p: Progress) -> Message:
    """One host's throughput at an epoch's end, by its own clock: the global rate it
    measured, times its share of the ranks."""
    unit = "tokens" if p.tokens_per_s is not None else "images"
    rate = p.tokens_per_s if p.tokens_per_s is not None else p.images_per_s
    return {
        "type": "host",
        "node_rank": host["node_rank"],
        "host": host["host"],
        "epoch": p.epoch,
        "step": p.step,
        "phase": p.phase,
        "rate": round(rate * host["share"], 2),
        "unit": f"{unit}/s",
    }


def trial(record: dict[str, Any]) -> Message:
    return {"type": "trial", **record}


def done(report: dict[str, Any]) -> Message:
    return {"type": "done", "report": report}


def cancelled() -> Message:
    return {"type": "cancelled"}


def error(kind: ErrorKind, message: str) -> Message:
    return {"type": "error", "kind": kind, "message": message}


def stored_progress(latest: Message) -> Message:
    """The job row's `progress`: the newest progress message's fields, each present."""
    return {k: latest.get(k) for k in STORED_PROGRESS}
