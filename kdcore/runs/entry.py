"""The entry points: `run`, `distill`, `train` (spec -> outputs folder -> report).

A job runs in this process (kdcore.runs.distributed.run_one: kdcore.image.run.run_local, or
kdcore.text.run for text tasks), or data parallel over
`resources.gpus` processes (kdcore.runs.distributed.run_parallel, which runs run_one in
each rank).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kdcore.checks.validate import parse_spec
from kdcore.engine.callbacks import Callbacks
from kdcore.errors import SpecError
from kdcore.runs.distributed import run_one, run_parallel
from kdcore.runs.sweep import run_sweep
from kdcore.spec import JobSpec


def run(
    spec: JobSpec | dict,
    out_dir: str | Path,
    callbacks: Callbacks | None = None,
    resume_from: str | Path | None = None,
    keep_checkpoints: int | None = None,
    teacher_cache: str | Path | None = None,
) -> dict[str, Any]:
    """Run a `distill` or `train` job; returns the report (also written to report.json).
    With `resources.gpus` > 1 the training is data parallel (kdcore.runs.distributed).
    `keep_checkpoints` N keeps the newest N of out_dir/checkpoints/epochN.pt (and the
    one resumed from); None keeps them all. `teacher_cache`: a folder where the
    teacher's outputs are kept for later jobs (kdcore.image.teacher_cache); None: none kept."""
    spec = spec if isinstance(spec, JobSpec) else parse_spec(spec)
    cache = Path(teacher_cache) if teacher_cache is not None else None
    if spec.sweep is not None:  # several trainings, the best kept (gpus is 1: validated)
        return run_sweep(spec, Path(out_dir), callbacks, resume_from, keep_checkpoints, cache)
    if spec.resources.nodes > 1 and not torch.distributed.is_initialized():
        raise SpecError(
            [
                (
                    "/resources/nodes",
                    f"{spec.resources.nodes} hosts: the ranks are started by torchrun's agents "
                    "(the service's workers do it, docs/multi-host.md), which start the "
                    "process group this call runs in",
                )
            ]
        )
    ranked = spec.resources.gpus > 1 or spec.distillation.sharding == "fsdp"  # a group of 1
    if ranked and not torch.distributed.is_initialized():
        return run_parallel(spec, Path(out_dir), callbacks, resume_from, keep_checkpoints, cache)
    return run_one(spec, Path(out_dir), callbacks, resume_from, keep_checkpoints, cache)


def _run_kind(
    kind: str,
    spec: JobSpec | dict,
    out_dir: str | Path,
    callbacks: Callbacks | None,
    resume_from: str | Path | None,
    keep_checkpoints: int | None,
    teacher_cache: str | Path | None,
) -> dict[str, Any]:
    spec = spec if isinstance(spec, JobSpec) else parse_spec(spec)
    if spec.kind != kind:
        raise SpecError([("/kind", f"{kind}() needs kind {kind!r}, the spec says {spec.kind!r}")])
    return run(spec, out_dir, callbacks, resume_from, keep_checkpoints, teacher_cache)


def distill(
    spec: JobSpec | dict,
    out_dir: str | Path,
    callbacks: Callbacks | None = None,
    resume_from: str | Path | None = None,
    keep_checkpoints: int | None = None,
    teacher_cache: str | Path | None = None,
) -> dict[str, Any]:
    """Distil `spec.teacher` into `spec.student`; see `run`."""
    return _run_kind(
        "distill", spec, out_dir, callbacks, resume_from, keep_checkpoints, teacher_cache
    )


def train(
    spec: JobSpec | dict,
    out_dir: str | Path,
    callbacks: Callbacks | None = None,
    resume_from: str | Path | None = None,
    keep_checkpoints: int | None = None,
) -> dict[str, Any]:
    """Train `spec.student` alone (teachers, baselines); see `run`."""
    return _run_kind("train", spec, out_dir, callbacks, resume_from, keep_checkpoints, None)
