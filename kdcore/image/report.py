"""Measurements for report.json: held-out quality, agreement, size and CPU latency."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdcore.engine.precision import predict, uses_bf16
from kdcore.image.data import DataSplits, Split
from kdcore.image.streaming import loading_report
from kdcore.image.trainer import FitResult
from kdcore.models import count_parameters
from kdcore.shipping.latency import measure, measure_models, model_forwards
from kdcore.shipping.readiness import readiness
from kdcore.spec import JobSpec, ModelSpec


def cpu_latency_ms(
    model: nn.Module, input_shape: tuple[int, ...], batch: int, time_cap_s: float = 1.0
) -> dict[str, Any]:
    """One model's CPU latency (kdcore.shipping.latency): `median_ms`, `iqr_ms`, `runs`, `noisy`."""
    window = measure(model_forwards({"model": model}, input_shape, batch), time_cap_s)
    return {**window["model"], "noisy": window["noisy"], "why": window.get("why")}


def _with_latency(
    report: dict[str, Any], models: dict[str, nn.Module], input_shape: tuple[int, ...]
) -> None:
    """Teacher and student timed in one window each batch size (kdcore.shipping.latency): each
    model's median into its section, the whole measurement into `latency`."""
    latency = report["latency"] = measure_models(models, input_shape)
    for name in models:
        for batch in ("batch1", "batch64"):
            report[name][f"latency_ms_{batch}"] = latency[batch][name]["median_ms"]


def held_out_metrics(
    model: nn.Module, split: Split, regression: bool, device: torch.device
) -> tuple[dict[str, float], torch.Tensor]:
    out = predict(model, split.x, 512, device).cpu()
    y = split.y
    if regression:
        return {"mse": float(((out.reshape(y.shape) - y) ** 2).mean())}, out
    return {"accuracy": float((out.argmax(1) == y).float().mean())}, out


def agreement(student_out: torch.Tensor, teacher_out: torch.Tensor) -> float:
    """Fraction of held-out samples where student and teacher predict the same class."""
    return float((student_out.argmax(1) == teacher_out.argmax(1)).float().mean())


def _state_bytes(model: nn.Module) -> int:
    from safetensors.torch import save

    graphs = sum(getattr(m, "onnx_bytes", 0) for m in model.modules())  # ONNX teachers
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return graphs + (len(save(state)) if state else 0)


def _class_names(data: DataSplits) -> list[str]:
    return data.class_names or [str(c) for c in range(data.num_classes)]


def _members(
    members: Sequence[tuple[ModelSpec, nn.Module]],
    data: DataSplits,
    regression: bool,
    device: torch.device,
) -> list[dict[str, Any]]:
    """report.teachers: each teacher of an ensemble on its own."""
    return [
        {
            "arch": m_spec.label,
            "weight": getattr(m_spec, "weight", 1.0),
            **held_out_metrics(model, data.test, regression, device)[0],
            "parameters": count_parameters(model),
        }
        for m_spec, model in members
    ]


def build_report(
    spec: JobSpec,
    device: torch.device,
    data: DataSplits,
    result: FitResult,
    student: nn.Module,
    teacher: nn.Module | None,
    weights: Path,
    members: Sequence[tuple[ModelSpec, nn.Module]] = (),
) -> dict[str, Any]:
    """report.json without its files: the run, the student on the test split, and, for
    a distillation, the teacher and how the two compare. With several teachers,
    "teacher" is their ensemble (the soft targets' argmax) and "teachers" lists each."""
    regression = spec.task == "regression"
    report: dict[str, Any] = {
        "name": spec.name,
        "kind": spec.kind,
        "task": spec.task,
        "device": device.type,
        "processes": spec.resources.ranks,  # data-parallel ranks, on all hosts
        "nodes": spec.resources.nodes,
        "threads": torch.get_num_threads(),  # per process (the job's CPU budget)
        "precision": "bf16" if uses_bf16(device, spec.training.precision) else "fp32",
        "dataset": {
            "name": spec.dataset.name,
            "train": len(data.train),
            "val": len(data.val),
            "test": len(data.test),
            "input_shape": list(data.input_shape),
            "loading": loading_report(data),
        },
        "epochs": spec.training.epochs,
        "steps": result.steps,
        "training_time_s": round(result.train_time_s, 3),
        "train_images_per_s": round(result.images_per_s, 2),
        "selection": spec.training.select if spec.selects_best else "last",
        "selected_epoch": result.selected_epoch,  # whose weights the student holds
        "stopped_early_at_epoch": result.stopped_at_epoch,  # None: ran every epoch
        "teacher_cache": result.used_teacher_cache,
        "teacher_forward": result.teacher_forward.to_dict() if result.teacher_forward else None,
        "teacher_store": result.teacher_store,  # the on-disk teacher cache: hits, writes
        "history": result.history,
    }
    s_metrics, s_out = held_out_metrics(student, data.test, regression, device)
    s = report["student"] = {
        "arch": spec.student_arch,
        **s_metrics,
        "parameters": count_parameters(student),
        "bytes_on_disk": weights.stat().st_size,
    }
    if spec.student.checkpoint:  # a warm start: say so, and whether the head was fresh
        s["initialised_from_checkpoint"] = True
        s["reset_head"] = spec.student.reset_head
    if teacher is None or not members:
        _with_latency(report, {"student": student}, data.input_shape)
        return report
    t_metrics, t_out = held_out_metrics(teacher, data.test, regression, device)
    if spec.teachers is not None:
        report["teachers"] = _members(members, data, regression, device)
    t = report["teacher"] = {
        "arch": " + ".join(m_spec.label for m_spec, _ in members),
        **t_metrics,
        "parameters": count_parameters(teacher),
        "bytes_on_disk": _state_bytes(teacher),
    }
    _with_latency(report, {"teacher": teacher, "student": student}, data.input_shape)
    if not regression:
        report["agreement"] = agreement(s_out, t_out)
        report["readiness"] = readiness(s_out, t_out, data.test.y, _class_names(data))
    report["compression_ratio"] = round(t["parameters"] / s["parameters"], 3)
    report["size_ratio"] = round(t["bytes_on_disk"] / s["bytes_on_disk"], 3)
    report["speedup_batch1"] = round(t["latency_ms_batch1"] / s["latency_ms_batch1"], 3)
    report["speedup_batch64"] = round(t["latency_ms_batch64"] / s["latency_ms_batch64"], 3)
    return report
