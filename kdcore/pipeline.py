"""`distill` and `train`: from a spec to a folder of outputs.

out_dir/student.safetensors, student.json     the student and how to rebuild it
out_dir/student.torchscript.pt, student.onnx  optional exports
out_dir/report.json                           quality, size, speed, training figures
out_dir/curves.png                            loss terms and accuracy per epoch
out_dir/checkpoints/epochN.pt                 training checkpoints (exact resume)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdcore.callbacks import Callbacks
from kdcore.checkpoints import CheckpointError, atomic_write, load_checkpoint, load_weights
from kdcore.data import DataSplits, load_dataset
from kdcore.errors import SpecError
from kdcore.export import model_config, onnx_max_abs_error, save_student
from kdcore.models import build_model
from kdcore.plots import plot_curves
from kdcore.report import agreement, held_out_metrics, model_summary
from kdcore.spec import JobSpec, ModelSpec, parse_spec
from kdcore.trainer import fit, freeze_teacher, pick_device, uses_bf16


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _state_bytes(model: nn.Module) -> int:
    from safetensors.torch import save

    return len(save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}))


def build_role(spec: ModelSpec, role: str, data: DataSplits) -> tuple[nn.Module, int]:
    """Build the teacher or student for this data; errors point at the spec field."""
    num_classes = spec.num_classes or data.num_classes
    if not data.regression and num_classes < data.num_classes:
        raise SpecError(
            [
                (
                    f"/{role}/num_classes",
                    f"{num_classes} classes, but the dataset has {data.num_classes}",
                )
            ]
        )
    if (
        spec.in_channels is not None
        and len(data.input_shape) == 3
        and spec.in_channels != data.input_shape[0]
    ):
        raise SpecError(
            [
                (
                    f"/{role}/in_channels",
                    f"{spec.in_channels} input channels, but the dataset has {data.input_shape[0]}",
                )
            ]
        )
    try:
        model = build_model(spec.arch, num_classes, data.input_shape)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise SpecError([(f"/{role}/arch", f"cannot build {spec.arch}: {exc}")]) from None
    if spec.checkpoint:
        load_weights(model, spec.checkpoint)
    return model, num_classes


def _training_identity(spec: Any) -> Any:
    """The spec minus where its files are: a resumed run may find the same teacher and
    data at other paths (another host's cache, a moved folder), never other settings."""
    if not isinstance(spec, dict):
        return spec
    spec = json.loads(json.dumps(spec))
    for role in ("teacher", "student"):
        if isinstance(spec.get(role), dict):
            spec[role].pop("checkpoint", None)
    if isinstance(spec.get("dataset"), dict):
        spec["dataset"].pop("path", None)
    return spec


def run(
    spec: JobSpec | dict,
    out_dir: str | Path,
    callbacks: Callbacks | None = None,
    resume_from: str | Path | None = None,
) -> dict[str, Any]:
    """Run a `distill` or `train` job; returns the report (also written to report.json).
    With `resources.gpus` > 1 the training is data parallel (kdcore.distributed)."""
    spec = spec if isinstance(spec, JobSpec) else parse_spec(spec)
    if spec.resources.gpus > 1 and not torch.distributed.is_initialized():
        from kdcore.distributed import run_parallel

        return run_parallel(spec, Path(out_dir), callbacks, resume_from)
    return run_local(spec, Path(out_dir), callbacks, resume_from)


def run_local(
    spec: JobSpec,
    out_dir: Path,
    callbacks: Callbacks | None,
    resume_from: str | Path | None,
) -> dict[str, Any]:
    """This process's part of a run: all of it, or one rank of a data-parallel run
    (the other ranks train and stop; rank 0 also writes the outputs)."""
    tr = spec.training
    device = pick_device(tr.device)
    regression = spec.task == "regression"
    data = load_dataset(spec.dataset, tr.seed, regression=regression)

    torch.manual_seed(tr.seed)
    student, num_classes = build_role(spec.student, "student", data)
    teacher = None
    if spec.teacher is not None:
        teacher, _ = build_role(spec.teacher, "teacher", data)
        freeze_teacher(teacher)
    resume = None
    if resume_from is not None:
        resume = load_checkpoint(resume_from)
        if _training_identity(resume.get("spec")) != _training_identity(
            spec.model_dump(mode="json")
        ):
            raise CheckpointError(f"{resume_from} was written by a different spec")

    result = fit(
        spec, data, student, teacher, device, out_dir / "checkpoints", callbacks, resume=resume
    )
    if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        if spec.baseline and teacher is not None:  # a collective run: every rank trains it
            _baseline(spec, data, device, {"accuracy": 0.0, "mse": 0.0}, None)
        return {}

    files = save_student(
        student,
        model_config(spec.student.arch, num_classes, data, spec.task),
        out_dir,
        list(spec.export),
    )
    report: dict[str, Any] = {
        "name": spec.name,
        "kind": spec.kind,
        "task": spec.task,
        "device": device.type,
        "processes": spec.resources.gpus,  # data-parallel ranks
        "precision": "bf16" if uses_bf16(device, tr.precision) else "fp32",
        "dataset": {
            "name": spec.dataset.name,
            "train": len(data.train),
            "val": len(data.val),
            "test": len(data.test),
            "input_shape": list(data.input_shape),
        },
        "epochs": tr.epochs,
        "steps": result.steps,
        "training_time_s": round(result.train_time_s, 3),
        "train_images_per_s": round(result.images_per_s, 2),
        "teacher_cache": result.used_teacher_cache,
        "history": result.history,
    }
    s_metrics, s_out = held_out_metrics(student, data.test, regression, device)
    report["student"] = {
        "arch": spec.student.arch,
        **s_metrics,
        **model_summary(student, data.input_shape),
        "bytes_on_disk": files["safetensors"].stat().st_size,
    }
    if teacher is not None and spec.teacher is not None:
        t_metrics, t_out = held_out_metrics(teacher, data.test, regression, device)
        t = {
            "arch": spec.teacher.arch,
            **t_metrics,
            **model_summary(teacher, data.input_shape),
            "bytes_on_disk": _state_bytes(teacher),
        }
        s = report["student"]
        report["teacher"] = t
        if not regression:
            report["agreement"] = agreement(s_out, t_out)
        report["compression_ratio"] = round(t["parameters"] / s["parameters"], 3)
        report["size_ratio"] = round(t["bytes_on_disk"] / s["bytes_on_disk"], 3)
        report["speedup_batch1"] = round(t["latency_ms_batch1"] / s["latency_ms_batch1"], 3)
        report["speedup_batch64"] = round(t["latency_ms_batch64"] / s["latency_ms_batch64"], 3)
    if "onnx" in files:
        report["onnx_max_abs_error"] = onnx_max_abs_error(
            student.cpu(), files["onnx"], torch.randn(4, *data.input_shape)
        )
    if spec.baseline and teacher is not None:
        report["baseline"], report["kd_gain"] = _baseline(spec, data, device, s_metrics, callbacks)
    key = "mse" if regression else "accuracy"
    files["curves"] = plot_curves(
        result.history,
        out_dir / "curves.png",
        spec.name,
        key,
        report.get("teacher", {}).get(key),
    )
    report["files"] = {
        fmt: {"name": p.name, "bytes": p.stat().st_size, "sha256": _sha256(p)}
        for fmt, p in files.items()
    }
    blob = json.dumps(report, indent=2).encode()
    atomic_write(out_dir / "report.json", lambda fh: fh.write(blob))
    return report


def _baseline(
    spec: JobSpec,
    data: DataSplits,
    device: torch.device,
    kd_metrics: dict[str, float],
    callbacks: Callbacks | None,
) -> tuple[dict, float]:
    """Train the same student from scratch with the same data, budget and seed."""
    torch.manual_seed(spec.training.seed)
    scratch_spec = spec.model_copy(update={"kind": "train", "teacher": None})
    student, _ = build_role(spec.student, "student", data)
    result = fit(scratch_spec, data, student, None, device, None, callbacks, phase="baseline")
    metrics, _ = held_out_metrics(student, data.test, spec.task == "regression", device)
    key = "mse" if spec.task == "regression" else "accuracy"
    gain = kd_metrics[key] - metrics[key]
    if key == "mse":
        gain = -gain  # a lower error is a gain
    return {**metrics, "training_time_s": round(result.train_time_s, 3)}, gain


def _run_kind(
    kind: str,
    spec: JobSpec | dict,
    out_dir: str | Path,
    callbacks: Callbacks | None,
    resume_from: str | Path | None,
) -> dict[str, Any]:
    spec = spec if isinstance(spec, JobSpec) else parse_spec(spec)
    if spec.kind != kind:
        raise SpecError([("/kind", f"{kind}() needs kind {kind!r}, the spec says {spec.kind!r}")])
    return run(spec, out_dir, callbacks, resume_from)


def distill(
    spec: JobSpec | dict,
    out_dir: str | Path,
    callbacks: Callbacks | None = None,
    resume_from: str | Path | None = None,
) -> dict[str, Any]:
    """Distil `spec.teacher` into `spec.student`; see `run`."""
    return _run_kind("distill", spec, out_dir, callbacks, resume_from)


def train(
    spec: JobSpec | dict,
    out_dir: str | Path,
    callbacks: Callbacks | None = None,
    resume_from: str | Path | None = None,
) -> dict[str, Any]:
    """Train `spec.student` alone (teachers, baselines); see `run`."""
    return _run_kind("train", spec, out_dir, callbacks, resume_from)
