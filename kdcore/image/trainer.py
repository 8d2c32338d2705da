"""Images as a task of the one training loop (kdcore.engine.loop).

`fit` trains `student` on `data.train`, with a frozen `teacher` when one is given
(distillation) or on its own (plain supervised training). `ImageTask` gives the loop
its batches (in memory or decoded by the streaming path), the loss of one (augmented
by a generator seeded per step, the teacher's outputs live or cached), and the
held-out evaluation; the loop does the rest, as for text.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdcore.engine.callbacks import Callbacks
from kdcore.engine.loop import data_parallel, ranks, train_loop
from kdcore.engine.precision import autocast_for, predict
from kdcore.errors import SpecError
from kdcore.image.augment import augment_batch
from kdcore.image.data import DataSplits, Split, model_input
from kdcore.image.fast_teacher import TeacherForward
from kdcore.image.features import FeatureTap, classifier_name
from kdcore.image.streaming import StreamedImages
from kdcore.image.teacher_outputs import Batching, TeacherOutputs
from kdcore.losses import DistillLoss, build_loss, task_loss
from kdcore.models import default_feature_layers
from kdcore.spec import JobSpec

ON_DEVICE_LIMIT_BYTES = 4 * 1024**3  # datasets smaller than this live on the device


@dataclass
class FitResult:
    student: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)
    train_time_s: float = 0.0
    images_seen: int = 0
    steps: int = 0
    used_teacher_cache: bool = False
    selected_epoch: int | None = None  # whose weights the student holds at the end
    stopped_at_epoch: int | None = None  # early stopping ended the run after this epoch
    teacher_forward: TeacherForward | None = None  # how the uncached teacher ran
    teacher_store: dict[str, Any] | None = None  # the on-disk teacher cache's use

    @property
    def images_per_s(self) -> float:
        return self.images_seen / self.train_time_s if self.train_time_s > 0 else 0.0


def freeze_teacher(teacher: nn.Module) -> nn.Module:
    """The teacher never trains: eval mode (BatchNorm uses its running statistics and
    never updates them), no gradients."""
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def evaluate(
    model: nn.Module,
    split: Split,
    regression: bool,
    batch_size: int,
    device: torch.device,
    precision: str = "fp32",
) -> dict[str, float]:
    out = predict(model, split.x, batch_size, device, precision)
    y = split.y.to(out.device)
    if regression:
        return {"mse": F.mse_loss(out.reshape(y.shape), y).item()}
    return {
        "accuracy": (out.argmax(1) == y).float().mean().item(),
        "loss": F.cross_entropy(out, y).item(),
    }


def _tapped_layers(
    named: list[str], model: nn.Module, loss_fn: DistillLoss
) -> tuple[list[str], bool]:
    """The layers to tap and whether to take their inputs: the spec's layers (their
    outputs); else the classifier's input for embedding methods (CRD), else the
    model's own feature layers."""
    if named:
        return named, False
    if loss_fn.feature_kind == "embedding":
        head = classifier_name(model)
        return ([head], True) if head else ([], False)
    return default_feature_layers(model), False


def _feature_taps(
    spec: JobSpec, student: nn.Module, teacher: nn.Module, loss_fn: DistillLoss, example: Tensor
) -> tuple[FeatureTap, FeatureTap]:
    d = spec.distillation
    s_layers, s_inputs = _tapped_layers(d.student_layers, student, loss_fn)
    t_layers, t_inputs = _tapped_layers(d.teacher_layers, teacher, loss_fn)
    if not s_layers or not t_layers:
        raise SpecError(
            [
                (
                    "/distillation/student_layers",
                    f"method {d.method} needs student_layers and teacher_layers",
                )
            ]
        )
    if len(s_layers) != len(t_layers):
        raise SpecError(
            [
                (
                    "/distillation/teacher_layers",
                    f"{len(s_layers)} student layers but {len(t_layers)} teacher layers",
                )
            ]
        )
    s_tap = FeatureTap(student, s_layers, "student", inputs=s_inputs)
    t_tap = FeatureTap(teacher, t_layers, "teacher", inputs=t_inputs)
    with torch.no_grad():  # probe shapes in eval mode so no BatchNorm statistic moves
        was = student.training
        student.eval()
        student(example)
        teacher(example)
        student.train(was)
    try:
        loss_fn.setup([f.shape for f in s_tap.collect()], [f.shape for f in t_tap.collect()])
    except ValueError as exc:
        raise SpecError([("/distillation/student_layers", str(exc))]) from None
    return s_tap, t_tap


def _batching(batch_size: int, n: int, classes: int) -> Batching:
    """How each epoch is cut into steps. Data parallel (kdcore.runs.distributed started the
    process group): every rank holds the whole model, takes its slice of each global
    batch, and DDP averages the gradients. The ragged last batch is dropped (BatchNorm
    needs >1); a step is one batch on every rank."""
    world, rank = ranks()
    per_rank = min(batch_size, n // world)
    return Batching(per_rank, max(1, n // (per_rank * world)), world, rank, classes)


class ImageTask:
    """An image job as the loop's task: batches sliced from the split in memory (on
    the device when it fits) or decoded ahead by the streaming path's workers; the
    loss of the student against its labels, or against the frozen teacher's outputs
    (live, or read back from a cache)."""

    unit = "images"

    def __init__(
        self,
        spec: JobSpec,
        data: DataSplits,
        student: nn.Module,
        teacher: nn.Module | None,
        device: torch.device,
        teacher_cache: Path | None = None,
    ):
        tr = spec.training
        self.spec, self.data, self.student, self.device = spec, data, student, device
        # NHWC suits cuDNN and oneDNN alike: on a CPU at fp32 too (docs/benchmarks.md)
        self.channels_last = data.train.x.ndim == 4 and tr.channels_last is not False
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        student.to(device).to(memory_format=memory_format)
        train = data.train
        if isinstance(train.x, StreamedImages):  # decoded batch by batch (kdcore.image.streaming)
            train.x.decode_on_device = tr.decode == "device" or (
                tr.decode == "auto" and device.type == "cuda"
            )
        elif train.x.element_size() * train.x.nelement() < ON_DEVICE_LIMIT_BYTES:
            train = train.to(device)
        self.train = train
        self.batching = _batching(tr.batch_size, len(train), data.num_classes)
        self.steps_per_epoch = self.batching.steps_per_epoch
        self.has_validation = len(data.val) > 0
        self.loss_fn: DistillLoss | None = None
        self.s_tap: FeatureTap | None = None
        self.t_tap: FeatureTap | None = None
        self.teacher_out: TeacherOutputs | None = None
        if teacher is not None:
            self._teacher_side(teacher, memory_format, teacher_cache)
        self.extra: nn.Module | None = self.loss_fn
        # the compiled module shares its parameters with `student` (plain state dicts)
        module = data_parallel(student, device)
        self.forward: Callable[[Tensor], Tensor] = torch.compile(module) if tr.compile else module

    def _teacher_side(
        self, teacher: nn.Module, memory_format: torch.memory_format, cache: Path | None
    ) -> None:
        device, train = self.device, self.train
        freeze_teacher(teacher).to(device).to(memory_format=memory_format)
        loss_fn = build_loss(self.spec.distillation).to(device)
        if loss_fn.needs_features:
            sample = model_input(self.data, train.x[:2]).to(device)
            self.s_tap, self.t_tap = _feature_taps(
                self.spec, self.student, teacher, loss_fn, sample
            )
            loss_fn.to(device)
        loss_fn.bind_train_labels(train.y)
        self.loss_fn = loss_fn
        self.teacher_out = TeacherOutputs(
            teacher,
            loss_fn,
            self.spec,
            train,
            device,
            self.t_tap,
            self.channels_last,
            self.batching,
            cache,
        )

    def begin_epoch(self, epoch: int) -> None:
        if self.loss_fn is not None:
            self.loss_fn.set_epoch(epoch + 1)  # the warmup ramp counts epochs from 1

    def batches(
        self, epoch: int, start: int
    ) -> Generator[tuple[int, tuple[int, Tensor, Tensor]], None, None]:
        """(i, (i, positions in the split, inputs on the device)) for batches `start`..
        of the epoch's order, uint8 until on the device when streamed (a resumed epoch
        reads nothing twice)."""
        b, tr = self.batching, self.spec.training
        order = torch.randperm(
            len(self.train), generator=torch.Generator().manual_seed(tr.seed * 1_000_003 + epoch)
        ).to(self.train.x.device)
        steps = range(start, self.steps_per_epoch)
        firsts = [(i * b.world + b.rank) * b.batch_size for i in steps]
        positions = [order[f : f + b.batch_size] for f in firsts]
        images = self.train.x
        if isinstance(images, StreamedImages):
            decoded = images.batches(positions, self.device)
            for i, idx, u8 in zip(steps, positions, decoded, strict=True):
                yield i, (i, idx, images.normalise(u8))
            return
        for i, idx in zip(steps, positions, strict=True):
            yield i, (i, idx, images[idx].to(self.device, non_blocking=True))

    def loss(self, batch: tuple[int, Tensor, Tensor], step: int) -> tuple[dict[str, Tensor], int]:
        """Batch `i` of the epoch (its samples `idx`, inputs `x`), augmented by a
        generator seeded per step."""
        i, idx, x = batch
        spec, tr = self.spec, self.spec.training
        y = self.train.y[idx.to(self.train.y.device)].to(self.device)
        if spec.augment.enabled and x.ndim == 4:
            gen = torch.Generator().manual_seed(tr.seed * 7_368_787 + step)
            x = augment_batch(x, spec.augment, gen, spec.dataset.image_size)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_for(self.device, tr.precision):
            out = self.forward(x)
            if self.teacher_out is None or self.loss_fn is None:
                return task_loss(spec.task, out, y), len(idx)
            if self.loss_fn.needs_indices:
                seeded = torch.Generator().manual_seed(tr.seed * 9_999_991 + step)
                self.loss_fn.set_batch(idx, seeded)
            t_logits, t_feats = self.teacher_out(x, idx, step // self.steps_per_epoch, i)
            s_feats = self.s_tap.collect() if self.s_tap else []
            return self.loss_fn(out, t_logits, y, s_feats, t_feats), len(idx)

    def end_epoch(self) -> None:
        if self.teacher_out is not None:
            self.teacher_out.end_epoch()  # a whole epoch's crop soft labels go to the store

    def evaluate(self) -> dict[str, float]:
        """On the held-out split: validation, else test."""
        held_out = self.data.val if len(self.data.val) else self.data.test
        tr = self.spec.training
        regression = self.spec.task == "regression"
        return evaluate(
            self.student, held_out, regression, tr.eval_batch_size, self.device, tr.precision
        )

    def close(self) -> None:
        for tap in (self.s_tap, self.t_tap):
            if tap:
                tap.remove()


def fit(
    spec: JobSpec,
    data: DataSplits,
    student: nn.Module,
    teacher: nn.Module | None,
    device: torch.device,
    checkpoint_dir: Path | None,
    callbacks: Callbacks | None = None,
    phase: str = "train",
    resume: dict[str, Any] | None = None,
    log_every: int = 10,
    keep_checkpoints: int | None = None,
    teacher_cache: Path | None = None,
) -> FitResult:
    """Train `student` (distilling `teacher` when given) for `spec.training.epochs`,
    from `resume` (a checkpoint dict) if given, in the one loop (kdcore.engine.loop).
    With `keep_checkpoints` N, each save deletes all but the newest N `epochN.pt` (and
    the one resumed from). With `teacher_cache` (a folder), the teacher's outputs are
    kept there for later jobs (kdcore.image.teacher_cache)."""
    task = ImageTask(spec, data, student, teacher, device, teacher_cache)
    try:
        done = train_loop(
            spec,
            task,
            device,
            checkpoint_dir,
            callbacks,
            phase=phase,
            resume=resume,
            log_every=log_every,
            keep_checkpoints=keep_checkpoints,
        )
    finally:
        task.close()
    teacher_out = task.teacher_out
    return FitResult(
        student,
        history=done.history,
        train_time_s=done.train_time_s,
        images_seen=done.seen,
        steps=done.steps,
        used_teacher_cache=bool(teacher_out and teacher_out.cache is not None),
        selected_epoch=done.selected_epoch,
        stopped_at_epoch=done.stopped_at_epoch,
        teacher_forward=teacher_out.forward if teacher_out else None,
        teacher_store=teacher_out.store.report() if teacher_out and teacher_out.store else None,
    )
