"""Resuming a run: the checkpoint it goes on from, refused if another spec wrote it
(the same settings at other paths are the same run)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from kdcore.errors import CheckpointError
from kdcore.io.checkpoints import load_checkpoint
from kdcore.spec import JobSpec, model_entries


def training_identity(spec: Any) -> Any:
    """The spec minus where its files are: a resumed run may find the same teacher and
    data at other paths (another host's cache, a moved folder), never other settings.
    A sharded run's steps do not depend on its number of ranks: it may resume on
    another (the checkpoint holds whole states, kdcore.engine.sharding)."""
    if not isinstance(spec, dict):
        return spec
    spec = json.loads(json.dumps(spec))
    if (spec.get("distillation") or {}).get("sharding") == "fsdp":
        (spec.get("resources") or {}).pop("gpus", None)
    for _, model in model_entries(spec):
        model.pop("checkpoint", None)
    if isinstance(spec.get("dataset"), dict):
        spec["dataset"].pop("path", None)
    return spec


def load_resume(spec: JobSpec, resume_from: str | Path | None) -> dict[str, Any] | None:
    """The checkpoint at `resume_from` (None: a fresh run), if `spec` wrote it."""
    if resume_from is None:
        return None
    resume = load_checkpoint(resume_from)
    stored = resume.get("spec")
    with contextlib.suppress(ValueError):  # through today's schema: fields added since
        stored = JobSpec.model_validate(stored).model_dump(mode="json")  # take defaults
    if training_identity(stored) != training_identity(spec.model_dump(mode="json")):
        raise CheckpointError(f"{resume_from} was written by a different spec")
    return resume
