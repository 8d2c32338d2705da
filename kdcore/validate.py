"""Parse a job spec and check its registry names: the layer above the schema
(kdcore.spec) and the registries (models, datasets, losses), so neither imports the
other."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from kdcore.data import DATASETS, needs_path
from kdcore.errors import SpecError
from kdcore.losses import LOSSES
from kdcore.models import MODELS
from kdcore.spec import JobSpec


def _pointer(loc: tuple[Any, ...]) -> str:
    return "/" + "/".join(str(p) for p in loc) if loc else ""


def parse_spec(data: Any) -> JobSpec:
    """Parse a dict into a JobSpec, raising SpecError with a JSON pointer per bad field."""
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as exc:
        errors = []
        for e in exc.errors():
            loc = tuple(p for p in e["loc"] if not str(p).startswith("function-"))
            msg = e["msg"].removeprefix("Value error, ")
            errors.append((_pointer(loc), msg))
        raise SpecError(errors) from None
    problems = validate_names(spec)
    if problems:
        raise SpecError(problems)
    return spec


def validate_names(spec: JobSpec) -> list[tuple[str, str]]:
    """Check registry names and method/task fit. Returns (pointer, message) pairs."""
    problems: list[tuple[str, str]] = []
    for role in ("teacher", "student"):
        model = getattr(spec, role)
        if model is not None and model.arch not in MODELS:
            problems.append((f"/{role}/arch", str(MODELS.unknown(model.arch))))
    if spec.dataset.name not in DATASETS:
        problems.append(("/dataset/name", str(DATASETS.unknown(spec.dataset.name))))
    elif needs_path(spec.dataset.name) and not spec.dataset.path:
        problems.append(("/dataset/path", f"dataset {spec.dataset.name!r} needs a path"))
    if spec.kind == "distill":
        method = spec.distillation.method
        if method not in LOSSES:
            problems.append(("/distillation/method", str(LOSSES.unknown(method))))
        elif (method == "mse") != (spec.task == "regression"):
            want = "'mse'" if spec.task == "regression" else "one of kd, dkd, fitnet, at"
            problems.append(("/distillation/method", f"task {spec.task} needs method {want}"))
        if spec.distillation.cache_teacher is True and spec.augment.enabled:
            problems.append(
                (
                    "/distillation/cache_teacher",
                    "the teacher cache needs deterministic inputs; turn augment off",
                )
            )
    if (
        spec.task == "regression"
        and spec.dataset.name == "synthetic"
        and not spec.dataset.regression
    ):
        problems.append(("/dataset/regression", "task regression needs dataset.regression: true"))
    return problems
