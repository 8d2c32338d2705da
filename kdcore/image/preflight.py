"""Teacher preflight: before any training step, what the teacher will be fed and how
well it does on it.

A teacher fed the wrong inputs (another image size, other normalisation statistics,
another label order, the wrong checkpoint) still produces soft targets, and a job
distilling them "succeeds" with a student as bad as its teacher. Two things stop that:

- A teacher that a `train` job made carries its preprocessing in `student.json` beside
  its weights (`input_shape`, `normalize`), an ONNX graph in its metadata_props
  (`kd.input_shape`, `kd.mean`, `kd.std`: kdcore.models.onnx.read_preprocessing). A
  distill job that names that teacher and does not set `dataset.image_size` / `mean` /
  `std` itself takes them from there (`inherit_preprocessing`), and the report says so.
  A teacher of other channels than the data (those records, or a Hugging Face folder's
  `num_channels`) fails before its weights load (`load_for_teacher`).
- The teacher is scored on up to 512 validation samples (`teacher_preflight`). Below
  1.5x chance accuracy (classification), or with an MSE above the targets' variance
  (regression, what predicting the mean scores), the job fails at once with the figures
  and the likely causes; `distillation.teacher_check: "warn"` records it and goes on, as
  does a teacher given without weights (random by the spec's choice: validation warns).
  The report always holds what was compared and measured (`report.teacher_preflight`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdcore.engine.splits import DataSplits, Split
from kdcore.errors import ChannelCountError, KDError, TeacherCheckError
from kdcore.io.local_files import open_regular
from kdcore.models.ecosystems import folder_members, is_model_folder
from kdcore.models.onnx import read_preprocessing
from kdcore.shipping.readiness import CHANCE_MARGIN, PREFLIGHT_SAMPLES
from kdcore.spec import JobSpec

MAX_RECORD_BYTES = 1_000_000  # a student.json is a few KB; more is not one of ours


def _teacher_preprocessing(spec: JobSpec) -> tuple[dict[str, Any], str] | None:
    """The preprocessing a trained teacher's student.json records, and its path; None when
    the teacher's weights have none beside them (an upload, an ONNX graph, a folder)."""
    teachers = spec.teacher_models()
    if len(teachers) != 1 or not teachers[0][1].checkpoint:
        return None
    weights = Path(teachers[0][1].checkpoint)
    if weights.suffix != ".safetensors":  # an ONNX graph's metadata, a folder's config
        try:
            if is_model_folder(weights):
                return _folder_channels(weights)
            recorded = read_preprocessing(weights)
        except KDError:  # a file refused: building the teacher says why
            return None
        return (recorded, f"{weights.name} (ONNX metadata)") if recorded else None
    config = weights.with_name("student.json")
    if not config.is_file():
        return None
    try:  # read as itself (no link followed) and capped before it is parsed
        with open_regular(config) as fh:
            recorded = json.loads(fh.read(MAX_RECORD_BYTES + 1)[:MAX_RECORD_BYTES])
    except (KDError, OSError, ValueError):
        return None
    return (recorded, config.name) if isinstance(recorded, dict) else None


def _folder_channels(folder: Path) -> tuple[dict[str, Any], str] | None:
    """A Hugging Face image model folder's channels (config.json `num_channels`): checked
    against the dataset's, never inherited (the folder's config takes the dataset's size)."""

    def config(_key: str, fh: Any, _name: str) -> Any:
        return json.loads(fh.read(MAX_RECORD_BYTES + 1)[:MAX_RECORD_BYTES])

    try:
        found = folder_members(folder, ("config.json",), config).get("config.json")
    except (KDError, ValueError):
        return None
    channels = found.get("num_channels") if isinstance(found, dict) else None
    if not isinstance(channels, int) or isinstance(channels, bool):
        return None
    return {"channels": channels}, f"{folder.name} (config.json num_channels)"


def _channels(recorded: dict[str, Any]) -> int | None:
    """The channels a teacher records: a folder's num_channels, or its input shape's."""
    shape = recorded.get("input_shape")
    if isinstance(shape, list) and len(shape) == 3:
        return int(shape[0])
    channels = recorded.get("channels")
    return channels if isinstance(channels, int) else None


def inherit_preprocessing(spec: JobSpec) -> tuple[JobSpec, dict[str, Any]]:
    """The spec with the teacher's recorded image size and normalisation filled in where
    the spec leaves them unset, and what was taken (empty: nothing)."""
    found = _teacher_preprocessing(spec) if spec.kind == "distill" else None
    if found is None:
        return spec, {}
    recorded, source = found
    ds = spec.dataset
    update: dict[str, Any] = {}
    shape = recorded.get("input_shape")
    image = shape if isinstance(shape, list) and len(shape) == 3 else None  # not tabular
    if image is None:
        return spec, {}
    if ds.image_size is None:
        update["image_size"] = int(image[-1])
    normalize = recorded.get("normalize") or {}
    mean, std = normalize.get("mean"), normalize.get("std")
    if (
        ds.mean is None
        and ds.std is None
        and isinstance(mean, list)
        and isinstance(std, list)
        and len(mean) == len(std) == image[0]  # one per channel
    ):
        update["mean"], update["std"] = list(mean), list(std)
    if not update:
        return spec, {}
    try:  # what a file records passes the spec's own checks, or is not taken
        dataset = type(ds).model_validate({**ds.model_dump(), **update})
    except ValueError:
        return spec, {}
    return spec.model_copy(update={"dataset": dataset}), {"from": source, **update}


def load_for_teacher(
    spec: JobSpec, inherited: dict[str, Any], load: Callable[[JobSpec], DataSplits]
) -> DataSplits:
    """The job's data (`load`), then the teacher's channels against it: a teacher trained
    on images of other channels fails here, in words (its weights would not even load,
    and its inherited statistics do not fit): no image size or statistics can fix it."""
    found = _teacher_preprocessing(spec) if spec.kind == "distill" else None
    recorded = _channels(found[0]) if found else None
    try:
        data = load(spec)
    except ChannelCountError as exc:
        if found is None or recorded is None or "mean" not in inherited:
            raise
        raise _channel_error(found[1], recorded, exc.channels) from None
    if found is None or recorded is None or len(data.input_shape) != 3:
        return data
    if recorded != data.input_shape[0]:
        raise _channel_error(found[1], recorded, data.input_shape[0])
    return data


def _channel_error(source: str, teacher: int, channels: int) -> TeacherCheckError:
    return TeacherCheckError(
        f"the teacher was trained on {teacher}-channel images ({source}); the dataset "
        f"gives {channels}-channel ones. dataset.image_size and mean/std cannot change "
        "the channels: use a dataset with the teacher's channels, or a teacher trained on "
        "these"
    )


def _sample(data: DataSplits) -> tuple[Split, str]:
    split, name = (data.val, "validation") if len(data.val) else (data.train, "train")
    n = min(PREFLIGHT_SAMPLES, len(split))
    return Split(split.x[:n], split.y[:n]), name


def teacher_preflight(
    spec: JobSpec,
    data: DataSplits,
    teacher: nn.Module | None,
    device: torch.device,
    inherited: dict[str, Any],
) -> dict[str, Any] | None:
    """Score the teacher on held-out samples before training; raise TeacherCheckError
    near chance (unless teacher_check is "warn"). Returns report.teacher_preflight (None
    for a job without a teacher)."""
    from kdcore.image.trainer import evaluate

    if teacher is None:
        return None
    sample, split_name = _sample(data)
    measured = evaluate(teacher, sample, data.regression, spec.training.eval_batch_size, device)
    result: dict[str, Any] = {
        "split": split_name,
        "samples": len(sample),
        "input_shape": list(data.input_shape),
        "mean": data.mean,
        "std": data.std,
        "inherited": inherited or None,
        "check": spec.distillation.teacher_check,
    }
    if data.regression:
        variance = float(sample.y.float().var()) if len(sample) > 1 else 0.0
        result.update(mse=round(measured["mse"], 6), threshold_mse=round(variance, 6))
        result["passed"] = measured["mse"] < variance
        figure = f"an MSE of {measured['mse']:.4g}, above the targets' variance {variance:.4g}"
    else:
        chance = 1.0 / max(data.num_classes, 1)
        threshold = CHANCE_MARGIN * chance
        result.update(
            accuracy=round(measured["accuracy"], 4),
            chance=round(chance, 4),
            threshold_accuracy=round(threshold, 4),
        )
        result["passed"] = measured["accuracy"] >= threshold
        figure = (
            f"{measured['accuracy']:.1%} accuracy, near chance ({chance:.1%}; it needs "
            f"{threshold:.1%})"
        )
    # a teacher without weights is random by the spec's own choice (validation warns):
    # measured and recorded, never failed
    trained = all(model.checkpoint for _, model in spec.teacher_models())
    if not trained:
        result["check"] = "warn"
    if not result["passed"] and result["check"] == "fail":
        raise TeacherCheckError(_diagnosis(figure, result))
    if not result["passed"]:
        result["diagnosis"] = _diagnosis(figure, result)
    return result


def _diagnosis(figure: str, result: dict[str, Any]) -> str:
    shape = "x".join(map(str, result["input_shape"]))
    return (
        f"the teacher scores {figure} on {result['samples']} {result['split']} samples "
        f"before training, so distilling it would teach noise. Likely causes: the inputs "
        f"are not what it was trained on (it is fed {shape} images normalised with mean "
        f"{_short(result['mean'])} and std {_short(result['std'])}: set dataset.image_size, "
        "or dataset.mean/std to the statistics it was trained with, e.g. [0, 0, 0] and "
        "[1, 1, 1] for a model that takes pixels in [0, 1]); its classes are in another "
        "order than the dataset's; or the checkpoint is not the trained one. To go on "
        'anyway, set distillation.teacher_check to "warn"'
    )


def _short(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.3g}" for v in values) + "]"


def teacher_input_notes(spec: JobSpec, channels: int | None) -> tuple[str | None, list[str]]:
    """What validation can tell of the teacher's inputs without loading anything: (an
    error for a teacher of other channels than the dataset's `channels` (None: not known
    before decoding), warnings naming what the job inherits or sets against what the
    teacher records). The accuracy check itself runs when the job starts."""
    found = _teacher_preprocessing(spec) if spec.kind == "distill" else None
    if found is None:
        return None, []
    recorded, source = found
    teacher_channels = _channels(recorded)
    if channels is not None and teacher_channels is not None and teacher_channels != channels:
        return str(_channel_error(source, teacher_channels, channels)), []
    shape = recorded.get("input_shape")
    if not (isinstance(shape, list) and len(shape) == 3):
        return None, []
    notes = []
    _, inherited = inherit_preprocessing(spec)
    taken = [k for k in ("image_size", "mean", "std") if k in inherited]
    if taken:
        notes.append(
            f"the teacher's {source} records what it was trained on: the job feeds it "
            f"{shape[-1]}x{shape[-1]} images normalised as it was ({', '.join(taken)} "
            "inherited, as the spec leaves them unset)"
        )
    size = spec.dataset.image_size
    if size is not None and size != shape[-1]:
        notes.append(
            f"dataset.image_size {size} differs from the {shape[-1]} px the teacher was "
            f"trained on ({source}); the job scores the teacher on what it is fed before "
            "training and fails if it is near chance"
        )
    normalize = recorded.get("normalize") or {}
    given = (spec.dataset.mean, spec.dataset.std)
    if given[0] is not None and (normalize.get("mean"), normalize.get("std")) != (
        list(given[0]),
        list(given[1] or []),
    ):
        notes.append(
            f"dataset.mean/std differ from the statistics the teacher was trained with "
            f"({source}: mean {normalize.get('mean')}, std {normalize.get('std')})"
        )
    return None, notes
