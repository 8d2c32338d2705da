"""What a job will cost, estimated without allocating it, and the limits it must fit.

Models are built on PyTorch's `meta` device: parameters and activations have shapes but
no memory, so a vgg19 at 1024x1024 with 100,000 classes is sized in milliseconds. The
activation estimate is the sum of every module's output of one forward pass (what
autograd keeps for the backward pass) times the batch size, in float32. Datasets are
sized from their declared shapes (an .npz's headers, an archive's file count), never by
decoding them. The service checks these at submission, and the worker again before the
training process loads anything.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdcore.spec import DatasetSpec, JobSpec, ModelSpec, stored_side
from kdcore.tasks import modality

BYTES_PER_VALUE = 4  # float32
IMAGEFOLDER_CHANNELS = 3  # the decoder makes RGB unless every image is grayscale
BUILTIN_SAMPLES = {"digits": 1797, "fashion_mnist": 70_000}


@dataclass(frozen=True)
class Limits:
    max_model_params: int
    max_activation_bytes: int
    max_dataset_bytes: int
    max_archive_bytes: int
    # a sweep's whole budget: trials x epochs (each trial is also sized on its own); 64
    # trials of 10,000 epochs were valid before
    max_sweep_trial_epochs: int = 2_000
    # seconds a submission spends sizing a sweep's distinct trials; those not reached are
    # sized by the worker before the job starts (None: all of them, as the worker does)
    sweep_sizing_s: float | None = None


@dataclass
class SweepSizing:
    """How many of a sweep's distinct trial sizes were checked, of how many."""

    checked: int = 0
    distinct: int = 0


@dataclass(frozen=True)
class DatasetSize:
    samples: int
    input_shape: tuple[int, ...]
    classes: int

    @property
    def bytes(self) -> int:
        return self.samples * math.prod(self.input_shape) * BYTES_PER_VALUE


def dataset_size(spec: DatasetSpec, max_archive_bytes: int) -> DatasetSize | None:
    """Samples and input shape after resizing, from metadata only; None if unknown.
    max_samples does not shrink it: the whole dataset is decoded before sampling."""
    from kdcore.image.records import MAX_RECORDS
    from kdcore.image.sources import count_images
    from kdcore.io.archives import archive_cap, check_archive, inspect_npz

    side = spec.image_size
    shape: tuple[int, ...]
    if spec.name in BUILTIN_SAMPLES:
        base = 8 if spec.name == "digits" else 28
        n, shape, classes = BUILTIN_SAMPLES[spec.name], (1, side or base, side or base), 10
    elif spec.name == "synthetic":
        shape = tuple(spec.shape)
        if side and len(shape) == 3:
            shape = (shape[0], side, side)
        n, classes = spec.num_samples, spec.num_classes
    elif spec.name == "npz" and spec.path:
        shapes = inspect_npz(Path(spec.path), max_archive_bytes, verify=False)
        x = shapes.get("x", (0,))
        n, rest = x[0], tuple(x[1:])
        if len(rest) == 2:  # (N, H, W) grayscale
            rest = (1, *rest)
        if side and len(rest) == 3:
            rest = (rest[0], side, side)
        shape, classes = rest or (1,), 0
    elif spec.name == "imagefolder" and spec.path and not Path(spec.path).is_dir():
        path = Path(spec.path)
        cap = archive_cap(path, max_archive_bytes)  # as the upload was checked
        n = check_archive(path, max_files=MAX_RECORDS, max_bytes=cap, verify=False)
        shape, classes = (IMAGEFOLDER_CHANNELS, side or 32, side or 32), 0
    elif spec.name in ("imagefolder", "webdataset") and spec.path:
        n = count_images(Path(spec.path), webdataset=spec.name == "webdataset")
        shape, classes = (IMAGEFOLDER_CHANNELS, side or 32, side or 32), 0
    else:
        return None
    return DatasetSize(int(n), tuple(int(d) for d in shape), int(classes))


def model_cost(model: ModelSpec, classes: int, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(parameters, activation values of one sample) of `model`, built on the meta
    device. The activation count is -1 if the forward pass cannot run on meta."""
    import torch

    from kdcore.models import build_model

    if model.arch is None:
        raise ValueError("an ONNX teacher is sized by kdcore.models.onnx.inspect_onnx")
    with torch.device("meta"):
        net = build_model(model.arch, model.num_classes or classes, input_shape, model.config)
    params = sum(p.numel() for p in net.parameters())
    values = 0

    def count(_module: Any, _inputs: Any, output: Any) -> None:
        nonlocal values
        for t in output if isinstance(output, tuple | list) else (output,):
            if isinstance(t, torch.Tensor):
                values += t.numel()

    hooks = [m.register_forward_hook(count) for m in net.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            net.eval()(torch.empty((1, *input_shape), device="meta"))
    except Exception:  # noqa: BLE001 (an op without a meta kernel: no estimate)
        values = -1
    finally:
        for h in hooks:
            h.remove()
    return int(params), int(values)


BYTES_VOCAB = 257  # kdcore.text.tokens.bytes_tokenizer: a text job with no tokenizer file


@dataclass(frozen=True)
class FolderSizing:
    """What a model folder (an uploaded checkpoint) says about the model built from it."""

    config: dict[str, Any]
    vocab_size: int | None  # its tokenizer's, when it has a tokenizer.json


def as_built(spec: JobSpec, folders: dict[str, FolderSizing]) -> JobSpec:
    """The spec as the worker will build its models, for sizing: a model whose checkpoint
    is a model folder (its pointer in `folders`) takes the folder's config unless the
    spec gives one (kdcore.text.run._build, kdcore.models.ecosystems.build_hf); in a text
    job every model takes the vocabulary of the tokenizer it is built with: its own
    folder's, else the other model's, else bytes (kdcore.text.run._tokenizers)."""
    if not folders:
        return spec
    data = spec.model_dump(mode="json", exclude_unset=False)

    def node(pointer: str) -> dict[str, Any]:
        parts = pointer.strip("/").split("/")
        here: Any = data
        for part in parts:
            here = here[int(part)] if isinstance(here, list) else here[part]
        return here

    for pointer, folder in folders.items():
        model = node(pointer)
        if model.get("config") is None:
            model["config"] = dict(folder.config)
    if modality(spec.task) == "text" and not spec.dataset.tokenizer:
        own = {p: f.vocab_size for p, f in folders.items() if f.vocab_size}
        teacher = next((v for p, v in own.items() if p != "/student"), None)
        base = teacher or own.get("/student") or BYTES_VOCAB
        for pointer, _ in spec.model_roles():
            model = node(pointer)
            if model.get("config") is not None:
                model["config"] = {**model["config"], "vocab_size": own.get(pointer, base)}
    return JobSpec.model_validate(data)


def local_folders(spec: JobSpec) -> dict[str, FolderSizing]:
    """as_built's `folders` for a spec whose checkpoints are paths on this host (the
    worker's copy of a job, the library): each model folder archive read for sizing."""
    from kdcore.models.ecosystems import is_model_folder
    from kdcore.text.models import read_folder_sizing

    found = {}
    for pointer, model in spec.model_roles():
        path = Path(model.checkpoint) if model.checkpoint and model.arch else None
        if path is not None and path.is_file() and is_model_folder(path):
            found[pointer] = FolderSizing(*read_folder_sizing(path))
    return found


def check_limits(spec: JobSpec, limits: Limits) -> list[tuple[str, str]]:
    """(pointer, message) for each limit the job would pass; empty if it fits. A sweep
    is checked trial by trial: a swept architecture or batch size must fit too."""
    return check_with_sweep(spec, limits)[0]


def check_with_sweep(spec: JobSpec, limits: Limits) -> tuple[list[tuple[str, str]], SweepSizing]:
    """check_limits, and for a sweep how many distinct trial sizes were reached within
    limits.sweep_sizing_s (the rest are checked again where the job runs)."""
    sizing = SweepSizing()
    if modality(spec.task) == "text":  # language models: sized from their configs
        from kdcore.text.cost import text_limits

        return text_limits(spec, limits.max_model_params, limits.max_activation_bytes), sizing
    problems = _check_one(spec, limits)
    if spec.sweep is None or problems:
        return problems, sizing
    import time

    from kdcore.checks.sweep_plan import configurations, trial_dict, trial_epochs

    total = trial_epochs(spec)
    if total > limits.max_sweep_trial_epochs:
        message = (
            f"the sweep trains {total:,} trial-epochs in all (trials x epochs, rung by rung), "
            f"over this service's budget of {limits.max_sweep_trial_epochs:,}: use fewer "
            "trials (max_trials), fewer epochs, or strategy halving"
        )
        return [("/sweep", message)], sizing
    started = time.monotonic()
    seen: set[str] = set()
    for params in configurations(spec):
        trial = JobSpec.model_validate(trial_dict(spec, 0, params, spec.training.epochs))
        d = trial.distillation
        sized = trial.model_dump(mode="json", include={"student", "teacher", "teachers"})
        sized.update(
            method=d.method,
            crd=[d.crd_feature_dim, d.crd_negatives],
            batch=trial.training.batch_size,
        )
        key = json.dumps(sized, sort_keys=True)
        if key in seen:  # what sizes a trial is the same as an earlier one's: checked
            continue
        seen.add(key)
        sizing.distinct += 1
        budget = limits.sweep_sizing_s
        if budget is not None and time.monotonic() - started > budget:
            continue  # counted, not sized: the worker sizes every trial before it starts
        found = _check_one(trial, limits)
        sizing.checked += 1
        if found:  # the first trial over a limit, at the sweep's parameters
            problems = [("/sweep/parameters", f"{msg} (trial {params})") for _, msg in found]
            return problems, sizing
    return [], sizing


def _check_one(spec: JobSpec, limits: Limits) -> list[tuple[str, str]]:
    from kdcore.errors import KDError

    try:
        data = dataset_size(spec.dataset, limits.max_archive_bytes)
    except KDError as exc:
        return [("/dataset/path", str(exc))]
    if data is None:
        return []
    problems = []
    kept = data  # the imagenet preset keeps training images larger, for its crops
    if spec.augment.preset == "imagenet" and len(data.input_shape) == 3:
        side = stored_side(data.input_shape[-1])
        kept = DatasetSize(data.samples, (data.input_shape[0], side, side), data.classes)
    if kept.bytes > limits.max_dataset_bytes and not spec.dataset.streams(kept.bytes):
        problems.append(
            (
                "/dataset",
                f"the dataset decodes to about {kept.bytes / 1024**3:.2f} GiB "
                f"({kept.samples} x {list(kept.input_shape)} float32), over the limit of "
                f"{limits.max_dataset_bytes / 1024**3:.2f} GiB; use max_samples, a smaller "
                "image_size or fewer samples (imagefolder and webdataset sets stream: "
                "dataset.streaming)",
            )
        )
    batch = spec.training.batch_size
    total_values = 0
    for pointer, model in spec.model_roles():
        if model.arch is None or (model.arch.startswith("hf:") and model.config is None):
            continue  # an ONNX graph or an hf folder: sized from the file (the service)
        try:
            params, values = model_cost(model, max(data.classes, 1), data.input_shape)
        except (ValueError, RuntimeError, TypeError) as exc:
            problems.append((f"{pointer}/arch", f"{model.arch} cannot take this input: {exc}"))
            continue
        if params > limits.max_model_params:
            problems.append(
                (
                    pointer,
                    f"{model.arch} has {params:,} parameters here, over the limit of "
                    f"{limits.max_model_params:,} (num_classes and image_size drive it)",
                )
            )
        total_values += max(values, 0)
    activation_bytes = total_values * batch * BYTES_PER_VALUE + _method_bytes(spec, data)
    if activation_bytes > limits.max_activation_bytes:
        problems.append(
            (
                "/training/batch_size",
                f"one batch of {batch} needs about {activation_bytes / 1024**3:.2f} GiB of "
                f"activations, over the limit of {limits.max_activation_bytes / 1024**3:.2f} "
                "GiB; use a smaller batch_size or image_size",
            )
        )
    return problems


def _method_bytes(spec: JobSpec, data: DatasetSize) -> int:
    """Memory a method itself needs per step: CRD gathers (negatives + 1) bank rows per
    sample from each of its two banks, and keeps two banks of one row per sample."""
    d = spec.distillation
    if spec.kind != "distill" or d.method != "crd":
        return 0
    gathered = 2 * spec.training.batch_size * (d.crd_negatives + 1) * d.crd_feature_dim
    banks = 2 * data.samples * d.crd_feature_dim
    return (gathered + banks) * 4  # float32, kept for the backward of the scores
