"""Admission: everything that can be known of a job before it is queued, in one call.

`admit(spec, resolve, limits)` takes a parsed spec whose files are references (a
service's file ids, a CLI's paths) and a `resolve` that makes each reference a file on
this host. Each reference is resolved once; then the job is sized against `limits`
(models on the meta device, the dataset from its metadata), its teacher's recorded
preprocessing is compared with the data, and each checkpoint's tensor shapes with its
model. Nothing is allocated, decoded or run. Every problem comes back with its JSON
pointer; the later checks run only when the files they read resolved.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from kdcore.checks.cost import (
    FolderSizing,
    Limits,
    SweepSizing,
    as_built,
    check_with_sweep,
)
from kdcore.checks.validate import validate_names
from kdcore.errors import KDError
from kdcore.image.data import describe, needs_path
from kdcore.image.preflight import teacher_input_notes
from kdcore.models.ecosystems import HF, is_model_folder
from kdcore.spec import JobSpec, ModelSpec
from kdcore.text.data import text_set_problem
from kdcore.text.models import read_folder_sizing

Problem = tuple[str, str]  # (JSON pointer, message)

# what a reference is for: a model's weights, an image set, a text set, a tokenizer
Purpose = Literal["checkpoint", "dataset", "text", "tokenizer", "teacher_outputs"]

Resolve = Callable[[str, Purpose], Path | None]
"""(reference, purpose) -> the file on this host, or None when it is not here to read
yet (a set the worker fetches). Raises FileNotFoundError whose message says why the
reference names nothing the caller may use."""


@dataclass
class Admission:
    """What admission found: `problems` (none: the job may be queued), `warnings`, how
    much of a sweep was sized, and `local`, the spec with its files made paths on this
    host (None while a reference does not resolve)."""

    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    sizing: SweepSizing = field(default_factory=SweepSizing)
    local: JobSpec | None = None


def admit(spec: JobSpec, resolve: Resolve, limits: Limits) -> Admission:
    """The checks before a job is queued (see the module's docstring): the registries'
    names first (the rest needs them), then the files, sizes, inputs and weights."""
    found = Admission(problems=validate_names(spec))
    if found.problems:
        return found
    found.warnings = _warnings(spec)
    local, found.problems = _localise(spec, resolve)
    if found.problems:
        return found
    found.local = local
    found.problems = _text_set_problems(local)
    if found.problems:
        return found
    folders, problems = _model_folders(local, spec)
    if problems:
        found.problems = problems
        return found
    found.problems, found.sizing = check_with_sweep(as_built(local, folders), limits)
    if found.sizing.checked < found.sizing.distinct:
        found.warnings.append(
            f"{found.sizing.checked} of the sweep's {found.sizing.distinct} distinct trial "
            "sizes were checked at submission; the worker checks every one before the job "
            "starts"
        )
    if found.problems:
        return found
    shape = describe(spec.dataset)
    # the teacher's channels first: said in words, not in tensor shapes
    error, notes = teacher_input_notes(local, shape[0][0] if shape else None)
    found.warnings += notes
    if error:
        found.problems = [("/dataset", error)]
    elif shape is not None:  # a built-in set: its shapes are known before decoding
        found.problems = _weights_problems(local, shape[0], shape[1], limits)
    return found


def _localise(spec: JobSpec, resolve: Resolve) -> tuple[JobSpec, list[Problem]]:
    """The spec with every reference resolved once and made a path on this host, and a
    problem for each that does not resolve."""
    problems: list[Problem] = []

    def local(pointer: str, ref: str, purpose: Purpose) -> str | None:
        try:
            path = resolve(ref, purpose)
        except FileNotFoundError as exc:
            problems.append((pointer, str(exc)))
            return ref
        return None if path is None else str(path)

    updates = {}
    for pointer, model in spec.model_roles():
        if model.checkpoint is not None:
            path = local(f"{pointer}/checkpoint", model.checkpoint, "checkpoint")
            updates[pointer] = model.model_copy(update={"checkpoint": path})
    if spec.teacher is not None and spec.teacher.outputs is not None:
        path = local("/teacher/outputs", spec.teacher.outputs, "teacher_outputs")
        updates["/teacher"] = spec.teacher.model_copy(update={"outputs": path})
    ds = spec.dataset
    dataset = {}
    if ds.tokenizer is not None:
        dataset["tokenizer"] = local("/dataset/tokenizer", ds.tokenizer, "tokenizer")
    if ds.path is not None and ds.name != "text" and not needs_path(ds.name):
        problems.append(("/dataset/path", "built-in datasets take no path"))
    elif ds.path is not None:
        dataset["path"] = local(
            "/dataset/path", ds.path, "text" if ds.name == "text" else "dataset"
        )
    return _with_models(spec, updates).model_copy(
        update={"dataset": ds.model_copy(update=dataset)}
    ), problems


def _text_set_problems(local: JobSpec) -> list[Problem]:
    """A text set's form against its task, from its first line: a classifier given
    unlabelled text, or an embedding job given JSONL, is refused here rather than after
    the job was queued (a set the worker fetches is checked there)."""
    ds = local.dataset
    if ds.name != "text" or ds.path is None:
        return []
    try:
        problem = text_set_problem(local.task, Path(ds.path))
    except KDError as exc:
        return [("/dataset/path", str(exc))]
    return [] if problem is None else [("/dataset/path", problem)]


def _with_models(spec: JobSpec, updates: dict[str, ModelSpec]) -> JobSpec:
    """The spec with the models at these pointers (/student, /teacher, /teachers/N)
    replaced."""
    changed: dict[str, object] = {}
    teachers: list[ModelSpec] = list(spec.teachers or [])
    for pointer, model in updates.items():
        role, _, index = pointer.strip("/").partition("/")
        if role == "teachers":
            teachers[int(index)] = model
            changed["teachers"] = teachers
        else:
            changed[role] = model
    return spec.model_copy(update=changed)


def _model_folders(local: JobSpec, spec: JobSpec) -> tuple[dict[str, FolderSizing], list[Problem]]:
    """{pointer: FolderSizing} of each model whose checkpoint is a model folder (its
    config.json, its tokenizer's vocabulary), read as the worker reads them, so a folder
    is sized by the model it will build; problems (naming the reference as `spec` gave
    it) for folders that cannot be read."""
    folders, problems = {}, []
    given = dict(spec.model_roles())
    for pointer, model in local.model_roles():
        if model.checkpoint is None or model.arch is None:
            continue
        path = Path(model.checkpoint)
        if not is_model_folder(path):
            if model.arch.startswith(HF) and model.config is None:
                ref = str(given[pointer].checkpoint)
                problems.append((f"{pointer}/checkpoint", _bare_weights(model.arch, ref)))
            continue
        try:
            config, vocab = read_folder_sizing(path)
            if local.task == "embedding" and pointer == "/teacher":  # its pooling, as files
                from kdcore.text.embedding.folder import read_archive_pooling

                read_archive_pooling(path)
        except KDError as exc:
            problems.append((f"{pointer}/checkpoint", str(exc)))
            continue
        folders[pointer] = FolderSizing(config, vocab)
    return folders, problems


def _bare_weights(arch: str, ref: str) -> str:
    return (
        f"{arch} with no config needs a model folder (a zip of config.json + "
        f"model.safetensors [+ tokenizer.json], such as a job's student_hf.zip artifact); "
        f"{ref} holds weights only: give the folder, or the model's `config` beside them"
    )


def _warnings(spec: JobSpec) -> list[str]:
    warnings = []
    if (
        spec.kind == "distill"
        and spec.augment.enabled
        and spec.distillation.cache_teacher == "auto"
    ):
        warnings.append("augment is on, so teacher outputs are computed every step (no cache)")
    for pointer, model in spec.teacher_models():
        if model.checkpoint is None:
            warnings.append(f"{pointer} has no checkpoint: it will be randomly initialised")
    return warnings


def _weights_problems(
    spec: JobSpec, input_shape: tuple[int, ...], classes: int, limits: Limits
) -> list[Problem]:
    """Each checkpoint's tensor shapes against its model, built on the meta device (no
    memory), for data of this input shape and class count."""
    problems = []
    for pointer, model in spec.model_roles():
        if model.checkpoint is None:
            continue
        outputs = model.num_classes or classes
        path = Path(model.checkpoint)
        try:
            if model.arch is None:  # an ONNX teacher: its graph against the data
                problem = _graph_problem(path, input_shape, outputs, limits)
            else:
                problem = _weights_problem(model, path, input_shape, outputs, limits)
        except (KDError, ValueError, RuntimeError) as exc:
            problem = str(exc)
        if problem:
            problems.append((f"{pointer}/checkpoint", problem))
    return problems


def _weights_problem(
    model: ModelSpec, path: Path, input_shape: tuple[int, ...], outputs: int, limits: Limits
) -> str | None:
    """Do the weights (or an hf model folder's) fit the model, built on the meta device?"""
    import torch

    from kdcore.image.features import classifier_name
    from kdcore.io.checkpoints import check_fit, fit_shapes
    from kdcore.models import build_model
    from kdcore.models.ecosystems import read_hf_folder_shapes

    assert model.arch is not None
    config, shapes = model.config, None
    if model.arch.startswith(HF) and is_model_folder(path):
        # checked in full at upload: here only its config and its weights' header
        folder_config, shapes = read_hf_folder_shapes(path)
        config = model.config or folder_config
    with torch.device("meta"):
        net = build_model(model.arch, outputs, input_shape, config)
    params = sum(p.numel() for p in net.parameters())
    if params > limits.max_model_params:
        return (
            f"{model.arch} has {params:,} parameters, over the limit of {limits.max_model_params:,}"
        )
    reset = classifier_name(net) if model.reset_head else None
    if shapes is None:
        check_fit(net, path, reset)
    else:
        fit_shapes(net, shapes, path.name, reset)
    return None


def _graph_problem(
    path: Path, input_shape: tuple[int, ...], outputs: int, limits: Limits
) -> str | None:
    """Why an ONNX teacher cannot serve this job (not a graph, wrong shapes, too big)."""
    from kdcore.models.onnx import fit_problem, read_onnx

    sig = read_onnx(path)
    if sig is None:
        return "a teacher without arch must be an ONNX graph"
    if sig.parameters > limits.max_model_params:
        return (
            f"the ONNX teacher has {sig.parameters:,} weights, over the limit of "
            f"{limits.max_model_params:,}"
        )
    return fit_problem(sig, tuple(input_shape), outputs)


def teacher_score(local: JobSpec) -> str | None:
    """What the teacher preflight says of a spec whose files are on this host, where it
    is cheap to compute now (a built-in set, a small teacher); None otherwise. It runs
    the teacher, so a service asks for it on validation, not on submission."""
    from kdcore.image.run import preview_teacher

    return preview_teacher(local)
