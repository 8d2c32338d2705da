"""One job in this process: data, models, the training loop, the outputs, the report
(kdcore.runs.entry picks this or the data-parallel path).

out_dir/student.safetensors, student.json     the student and how to rebuild it
out_dir/student.torchscript.pt, student.onnx  optional exports
out_dir/report.json                           quality, size, speed, training figures
out_dir/curves.png                            loss terms and accuracy per epoch
out_dir/events.out.tfevents.kdcore            the same curves for TensorBoard
out_dir/checkpoints/epochN.pt                 training checkpoints (exact resume)
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdcore.engine.callbacks import Callbacks
from kdcore.engine.device import pick_device
from kdcore.engine.resume import load_resume
from kdcore.errors import KDError, SpecError
from kdcore.image.data import DataSplits, load_job_data
from kdcore.image.export import model_config, onnx_max_abs_error, save_student
from kdcore.image.features import classifier_name
from kdcore.image.onnx_variants import measure_exports, write_variants
from kdcore.image.preflight import inherit_preprocessing, load_for_teacher, teacher_preflight
from kdcore.image.qat import quantization_aware
from kdcore.image.report import build_report, held_out_metrics
from kdcore.image.trainer import fit, freeze_teacher
from kdcore.io.archives import MAX_UNPACKED_BYTES
from kdcore.io.checkpoints import CheckpointError, load_weights
from kdcore.models import build_model
from kdcore.models.ecosystems import HF, is_model_folder, read_hf_folder
from kdcore.models.ensemble import TeacherEnsemble
from kdcore.shipping import kd_gain
from kdcore.shipping.outputs import write_report
from kdcore.shipping.plots import plot_curves
from kdcore.shipping.readiness import evaluate_gate
from kdcore.shipping.tensorboard_events import write_events
from kdcore.spec import JobSpec, ModelSpec


def build_role(spec: ModelSpec, role: str, data: DataSplits) -> tuple[nn.Module, int]:
    """Build a teacher or the student for this data; errors point at the spec field
    (`role` is its pointer without the slash: "student", "teacher", "teachers/1")."""
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
    if spec.arch is None:
        return _onnx_teacher(spec, role, data, num_classes), num_classes
    config, weights = spec.config, spec.checkpoint
    folder = None
    if spec.arch.startswith(HF) and weights and is_model_folder(weights):
        config, local = read_hf_folder(Path(weights), MAX_UNPACKED_BYTES)
        config, weights, folder = spec.config or config, str(local), local.parent
    try:
        try:
            model = build_model(spec.arch, num_classes, data.input_shape, config)
        except (ValueError, RuntimeError, TypeError) as exc:
            raise SpecError([(f"/{role}/arch", f"cannot build {spec.arch}: {exc}")]) from None
        if weights:
            load_weights(model, weights, _head_to_reset(spec, role, model))
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
    return model, num_classes


def _head_to_reset(spec: ModelSpec, role: str, model: nn.Module) -> str | None:
    if not spec.reset_head:
        return None
    head = classifier_name(model)
    if head is None:
        raise SpecError([(f"/{role}/reset_head", f"{spec.arch} has no Linear classifier head")])
    return head


def _onnx_teacher(spec: ModelSpec, role: str, data: DataSplits, outputs: int) -> nn.Module:
    """A teacher given only as an ONNX graph: checked, fitted to the data, then run by
    onnxruntime (kdcore.models.onnx)."""
    from kdcore.models.onnx import OnnxTeacher, fit_problem, read_onnx

    pointer, checkpoint = f"/{role}/checkpoint", spec.checkpoint or ""
    try:
        sig = read_onnx(checkpoint) if checkpoint else None
    except CheckpointError as exc:
        raise SpecError([(pointer, str(exc))]) from None
    if sig is None:
        raise SpecError([(pointer, "a teacher without arch must be an ONNX graph")])
    problem = fit_problem(sig, data.input_shape, outputs)
    if problem:
        raise SpecError([(pointer, problem)])
    return OnnxTeacher(checkpoint, sig)


def build_teachers(
    spec: JobSpec, data: DataSplits
) -> tuple[nn.Module | None, list[tuple[ModelSpec, nn.Module]]]:
    """The frozen teacher the trainer distils from (one model, or a TeacherEnsemble of
    `teachers`) and each member with its spec, for the report."""
    members = []
    for pointer, model_spec in spec.teacher_models():
        model, _ = build_role(model_spec, pointer.lstrip("/"), data)
        members.append((model_spec, freeze_teacher(model)))
    if not members:
        return None, []
    if spec.teachers is None:
        return members[0][1], members
    ensemble = TeacherEnsemble(
        [m for _, m in members],
        [t.weight for t in spec.teachers],
        spec.distillation.temperature,
        regression=spec.task == "regression",
    )
    return freeze_teacher(ensemble), members


def run_local(
    spec: JobSpec,
    out_dir: Path,
    callbacks: Callbacks | None,
    resume_from: str | Path | None,
    keep_checkpoints: int | None = None,
    teacher_cache: Path | None = None,
) -> dict[str, Any]:
    """This process's part of a run: all of it, or one rank of a data-parallel run
    (the other ranks train and stop; rank 0 also writes the outputs)."""
    device = pick_device(spec.training.device)
    spec, inherited = inherit_preprocessing(spec)  # a trained teacher's size and statistics
    # a teacher of other channels than the data's: said before its weights load
    data = load_for_teacher(spec, inherited, load_job_data)
    torch.manual_seed(spec.training.seed)
    student, num_classes = build_role(spec.student, "student", data)
    teacher, members = build_teachers(spec, data)
    # before any step: a teacher near chance fails the job here
    preflight = teacher_preflight(spec, data, teacher, device, inherited)
    resume = resume_state(spec, resume_from)
    result = fit(
        spec,
        data,
        student,
        teacher,
        device,
        out_dir / "checkpoints",
        callbacks,
        resume=resume,
        keep_checkpoints=keep_checkpoints,
        teacher_cache=teacher_cache,
    )
    if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        if spec.baseline and teacher is not None:  # a collective run: every rank trains it
            train_baseline(spec, data, device, None)
        return {}
    skipped: dict[str, str] = {}
    files = save_student(
        student,
        model_config(spec.student_arch, num_classes, data, spec.task, student),
        out_dir,
        list(spec.export),
        skipped,
    )
    if "onnx" in files:
        write_variants(files, list(spec.export), data)
    quantization = None
    if spec.training.quantization == "int8":  # replaces the post-training student.int8.onnx
        quantization = quantization_aware(spec, data, student, teacher, device, files, callbacks)
    report = build_report(
        spec, device, data, result, student, teacher, files["safetensors"], members
    )
    _add_sections(
        report, teacher_preflight=preflight, quantization=quantization, exports_skipped=skipped
    )
    if len(spec.export) > 1:  # more than the safetensors weights
        report["exports"] = measure_exports(files, student, data)
    if "onnx" in files:
        report["onnx_max_abs_error"] = onnx_max_abs_error(
            student.cpu(), files["onnx"], torch.randn(4, *data.input_shape)
        )
    if spec.baseline and teacher is not None:
        report["baseline"] = train_baseline(spec, data, device, callbacks)
        report.update(kd_gain.compare(report["student"], report["baseline"]))
    if spec.gate is not None:  # after the baseline: min_kd_gain reads its comparison
        report["gate"] = evaluate_gate(spec.gate, report)
    key = "mse" if spec.task == "regression" else "accuracy"
    teacher_quality = report.get("teacher", {}).get(key)
    files["curves"] = plot_curves(
        result.history,
        out_dir / "curves.png",
        spec.name,
        key,
        teacher_quality,
        report.get("baseline", {}).get("history"),
    )
    files["tensorboard"] = write_events(report, out_dir)
    write_report(report, files, out_dir)
    return report


PREVIEW_MAX_SAMPLES = 2_000  # a validation's teacher score: at most this many samples
PREVIEW_MAX_TEACHER_BYTES = 64 * 1024**2  # and only teachers this small


def preview_teacher(spec: JobSpec) -> str | None:
    """What the job's teacher preflight would say, computed now for `POST
    /v1/jobs/validate`: a built-in dataset (at most 2,000 samples) and teachers of at most
    64 MiB on disk, on the CPU. The failing preflight's message, or None when the teacher
    passes or the score cannot be computed cheaply (the job still checks it at its start)."""
    from kdcore.image.data import describe

    checkpoints = [model.checkpoint for _, model in spec.teacher_models()]
    if spec.kind != "distill" or describe(spec.dataset) is None or not all(checkpoints):
        return None
    if sum(Path(c).stat().st_size for c in checkpoints if c) > PREVIEW_MAX_TEACHER_BYTES:
        return None
    cap = min(spec.dataset.max_samples or PREVIEW_MAX_SAMPLES, PREVIEW_MAX_SAMPLES)
    spec = spec.model_copy(
        update={
            "dataset": spec.dataset.model_copy(update={"max_samples": cap}),
            "distillation": spec.distillation.model_copy(update={"teacher_check": "warn"}),
        }
    )
    try:
        spec, inherited = inherit_preprocessing(spec)
        data = load_for_teacher(spec, inherited, load_job_data)
        teacher, _ = build_teachers(spec, data)
        result = teacher_preflight(spec, data, teacher, torch.device("cpu"), inherited)
    except (KDError, OSError, RuntimeError, ValueError):  # the other checks say why
        return None
    return None if result is None or result["passed"] else result.get("diagnosis")


def _add_sections(report: dict[str, Any], **sections: Any) -> None:
    """The report's optional sections: each one that holds something."""
    report.update({name: value for name, value in sections.items() if value})


def resume_state(spec: JobSpec, resume_from: str | Path | None) -> dict[str, Any] | None:
    """The checkpoint to resume from, refused if another spec wrote it; the spec as
    run_local trains it (a trained teacher's preprocessing inherited; a sweep asks
    first)."""
    return load_resume(inherit_preprocessing(spec)[0], resume_from)


def train_baseline(
    spec: JobSpec, data: DataSplits, device: torch.device, callbacks: Callbacks | None
) -> dict[str, Any]:
    """Train the same student from scratch with the same data, budget and seed; its
    figures on the test split (the report's `baseline`)."""
    torch.manual_seed(spec.training.seed)
    scratch_spec = spec.model_copy(update={"kind": "train", "teacher": None, "teachers": None})
    student, _ = build_role(spec.student, "student", data)
    result = fit(scratch_spec, data, student, None, device, None, callbacks, phase="baseline")
    metrics, _ = held_out_metrics(student, data.test, spec.task == "regression", device)
    history = [
        {k: h[k] for k in ("epoch", "accuracy", "mse", "loss") if k in h} for h in result.history
    ]
    return {**metrics, "training_time_s": round(result.train_time_s, 3), "history": history}
