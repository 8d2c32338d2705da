"""Parse a job spec and check its registry names: the layer above the schema
(kdcore.spec) and the registries (models, datasets, losses), so neither imports the
other."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from kdcore.checks import sweep_plan
from kdcore.errors import MAX_ERRORS, SpecError, unknown_field
from kdcore.image.data import DATASETS, needs_path
from kdcore.losses import LOSSES
from kdcore.models import is_known, unknown_arch
from kdcore.models.ecosystems import HF, check_hf_config
from kdcore.spec import JobSpec, ModelSpec
from kdcore.tasks import modality


def _pointer(loc: tuple[Any, ...]) -> str:
    return "/" + "/".join(str(p) for p in loc) if loc else ""


def parse_spec(data: Any) -> JobSpec:
    """Parse a dict into a JobSpec, raising SpecError with a JSON pointer per bad field
    (the schema's, then the registries' names)."""
    spec = parse_schema(data)
    problems = validate_names(spec)
    if problems:
        raise SpecError(problems)
    return spec


def parse_schema(data: Any) -> JobSpec:
    """The schema's part of parse_spec: types, ranges, unknown fields."""
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as exc:
        errors = []
        for e in exc.errors()[: MAX_ERRORS + 1]:  # SpecError keeps MAX_ERRORS; the rest wait
            loc = tuple(p for p in e["loc"] if not str(p).startswith("function-"))
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] == "extra_forbidden" and loc:
                msg = unknown_field(JobSpec, loc)
            elif e["type"] == "model_type" and not loc:
                msg = "a job spec is a JSON object"
            errors.append((_pointer(loc), msg))
        raise SpecError(errors) from None
    return spec


def _text_only_teacher(spec: JobSpec) -> list[tuple[str, str]]:
    """Stored outputs and endpoints stand for causal-LM teachers only."""
    problems = []
    if spec.teacher_outputs is not None:
        problems.append(("/teacher/outputs", "stored teacher outputs serve causal_lm jobs"))
    if spec.teacher_endpoint is not None:
        problems.append(("/teacher/endpoint", "a teacher endpoint serves causal_lm jobs"))
    return problems


def validate_names(spec: JobSpec) -> list[tuple[str, str]]:
    """Check registry names and method/task fit. Returns (pointer, message) pairs."""
    if modality(spec.task) == "text":  # language models and text classifiers
        from kdcore.text.validate import text_problems

        return text_problems(spec) + [
            p for m in spec.model_roles() for p in _config_problems(m[0], m[1])
        ]
    problems: list[tuple[str, str]] = []
    if spec.student.init_from_teacher:
        problems.append(("/student/init_from_teacher", "init_from_teacher is for text models"))
    problems += _text_only_teacher(spec)
    if spec.distillation.sharding != "none":
        problems.append(("/distillation/sharding", "fsdp sharding is built for causal_lm jobs"))
    for pointer, model in spec.model_roles():
        if model.arch is not None and not is_known(model.arch):
            problems.append((f"{pointer}/arch", unknown_arch(model.arch)))
        problems += _config_problems(pointer, model)
    if spec.dataset.name == "text":
        problems.append(
            ("/dataset/name", "dataset text is for tasks causal_lm and text_classification")
        )
    elif spec.dataset.name not in DATASETS:
        problems.append(("/dataset/name", str(DATASETS.unknown(spec.dataset.name))))
    elif needs_path(spec.dataset.name) and not spec.dataset.path:
        problems.append(("/dataset/path", f"dataset {spec.dataset.name!r} needs a path"))
    if spec.kind == "distill":
        problems += _method_problems(spec)
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
    return problems + _sweep_problems(spec) + _nodes_problems(spec)


def _nodes_problems(spec: JobSpec) -> list[tuple[str, str]]:
    """What one job on several hosts cannot do (docs/multi-host.md)."""
    if spec.resources.nodes == 1:
        return []
    found = []
    if spec.sweep is not None:
        found.append(("/resources/nodes", "a sweep's trials run on one host each: nodes 1"))
    if spec.training.quantization == "int8":
        found.append(("/resources/nodes", "training.quantization int8 runs in one process"))
    return found


def _sweep_problems(spec: JobSpec) -> list[tuple[str, str]]:
    """A sweep is checked by parsing every trial it would train: a bad value is refused
    before the job is queued, at the parameter that names it."""
    if spec.sweep is None:
        return []
    found = sweep_plan.problems(spec)
    if found:
        return found
    seen: set[str] = set()
    for params in sweep_plan.configurations(spec):
        try:
            parse_spec(sweep_plan.trial_dict(spec, 0, params, spec.training.epochs))
        except SpecError as exc:
            for pointer, message in exc.errors:
                key = pointer.strip("/").replace("/", ".")
                at = f"/sweep/parameters/{key}" if key in params else "/sweep/parameters"
                text = f"{message} (with {params})"
                if at not in seen:  # one message per parameter, not one per combination
                    seen.add(at)
                    found.append((at, text))
    return found


def _config_problems(pointer: str, model: ModelSpec) -> list[tuple[str, str]]:
    is_hf = model.arch is not None and model.arch.startswith(HF)
    if model.config is not None and not is_hf:
        return [(f"{pointer}/config", "config is for hf:<Class> models only")]
    if is_hf and model.config is None and model.checkpoint is None:
        return [(f"{pointer}/config", f"{model.arch} needs a config or a model folder")]
    if model.config is not None:
        try:
            check_hf_config(model.config)
        except ValueError as exc:
            return [(f"{pointer}/config", str(exc))]
    return []


def _method_problems(spec: JobSpec) -> list[tuple[str, str]]:
    """Does the method exist, fit the task, the teachers and the process count?"""
    method = spec.distillation.method
    if method not in LOSSES:
        return [("/distillation/method", str(LOSSES.unknown(method)))]
    if (method == "mse") != (spec.task == "regression"):
        others = ", ".join(n for n in LOSSES.names() if n != "mse")
        want = "'mse'" if spec.task == "regression" else f"one of {others}"
        return [("/distillation/method", f"task {spec.task} needs method {want}")]
    loss_cls = LOSSES.get(method)
    problems = []
    graphs = [p for p, m in spec.teacher_models() if m.arch is None]
    if graphs and getattr(loss_cls, "needs_features", False):
        problems.append(
            (
                graphs[0],
                f"method {method} reads the teacher's intermediate features, and an ONNX "
                "teacher gives only its output; use a logit method (kd, dkd, dist) or name "
                "the teacher's arch",
            )
        )
    if spec.teachers is not None and getattr(loss_cls, "needs_features", False):
        problems.append(
            (
                "/teachers",
                f"method {method} compares the features of one teacher; use teacher, or a "
                "logit method (kd, dkd, dist) with several teachers",
            )
        )
    if getattr(loss_cls, "needs_indices", False) and spec.resources.gpus * spec.resources.nodes > 1:
        problems.append(
            (
                "/resources/gpus",
                f"method {method} keeps a memory bank per sample that one process updates; "
                "run it with gpus: 1 and nodes: 1",
            )
        )
    return problems
