"""The training loop, readable in one sitting.

`fit` trains `student` on `data.train`, with a frozen `teacher` when one is given
(distillation) or on its own (plain supervised training). Everything random is a
function of (seed, epoch, step): batch order comes from a generator seeded per
epoch, augmentation from one seeded per step, and the global torch RNG (dropout)
is saved in each checkpoint. That is what makes resume bit-exact.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdcore.augment import augment_batch
from kdcore.callbacks import Callbacks, Progress
from kdcore.checkpoints import prune_checkpoints, save_checkpoint
from kdcore.data import DataSplits, Split, model_input
from kdcore.errors import Cancelled, SpecError
from kdcore.fast_teacher import TeacherForward
from kdcore.features import FeatureTap, classifier_name
from kdcore.losses import DistillLoss, build_loss, task_loss
from kdcore.models import default_feature_layers
from kdcore.optim import build_optimizer, lr_at, set_lr
from kdcore.precision import autocast_for, predict
from kdcore.selection import BestEpoch
from kdcore.spec import JobSpec
from kdcore.streaming import StreamedImages
from kdcore.teacher_outputs import Batching, TeacherOutputs

CHECKPOINT_VERSION = 1
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


def pick_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise SpecError([("/training/device", "CUDA was requested but is not available")])
        # with several ranks kdcore.distributed has set each process's own device
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


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


def stop_everywhere(
    cb: Callbacks, world: int, step: int, log_every: int, device: torch.device
) -> bool:
    """Cooperative cancel. One process asks its callbacks every step; with several
    ranks, rank 0's answer is shared every `log_every` steps so all stop at one step."""
    if world == 1:
        return cb.should_stop()
    if step % log_every:
        return False
    flag = torch.tensor([1.0 if cb.should_stop() else 0.0], device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item())


def _average_grads(module: nn.Module) -> None:
    world = torch.distributed.get_world_size()
    for p in module.parameters():
        if p.grad is not None:
            torch.distributed.all_reduce(p.grad)
            p.grad /= world


@dataclass
class _Run:
    """What one `fit` call trains with, built once by `_setup`."""

    spec: JobSpec
    data: DataSplits
    train: Split  # on the device when it fits
    student: nn.Module
    forward: Callable[[Tensor], Tensor]  # the student, maybe in DDP and torch.compile
    device: torch.device
    channels_last: bool
    optimizer: torch.optim.Optimizer
    loss_fn: DistillLoss | None
    teacher_out: TeacherOutputs | None
    s_tap: FeatureTap | None
    t_tap: FeatureTap | None
    world: int
    rank: int
    batch_size: int  # per rank
    steps_per_epoch: int
    total_steps: int
    phase: str
    checkpoint_dir: Path | None
    cb: Callbacks
    log_every: int
    keep_checkpoints: int | None = None  # None: keep every epochN.pt
    best: BestEpoch | None = None  # the best validation epoch so far, and early stopping
    resumed_epoch: int | None = None  # its checkpoint outlives the pruning


@dataclass
class _Clock:
    """Elapsed time, images/s over the last logging window, and the ETA."""

    resumed_step: int
    start: float = field(default_factory=time.perf_counter)
    window_images: int = 0
    window_start: float = field(default_factory=time.perf_counter)

    def rate(self) -> float:
        return self.window_images / max(1e-9, time.perf_counter() - self.window_start)

    def new_window(self) -> None:
        self.window_images, self.window_start = 0, time.perf_counter()

    def eta(self, step: int, total_steps: int) -> float:
        done = max(1, step - self.resumed_step)
        return (total_steps - step) * (time.perf_counter() - self.start) / done


def _batching(batch_size: int, n: int, classes: int) -> Batching:
    """How each epoch is cut into steps. Data parallel (kdcore.distributed started the
    process group): every rank holds the whole model, takes its slice of each global
    batch, and DDP averages the gradients. The ragged last batch is dropped (BatchNorm
    needs >1); a step is one batch on every rank."""
    world, rank = 1, 0
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    per_rank = min(batch_size, n // world)
    return Batching(per_rank, max(1, n // (per_rank * world)), world, rank, classes)


def _setup(
    spec: JobSpec,
    data: DataSplits,
    student: nn.Module,
    teacher: nn.Module | None,
    device: torch.device,
    checkpoint_dir: Path | None,
    cb: Callbacks,
    phase: str,
    log_every: int,
    teacher_cache: Path | None = None,
) -> _Run:
    tr = spec.training
    # NHWC suits cuDNN and oneDNN alike: on a CPU at fp32 too (docs/benchmarks.md)
    channels_last = data.train.x.ndim == 4 and tr.channels_last is not False
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    student.to(device).to(memory_format=memory_format)
    train = data.train
    if isinstance(train.x, StreamedImages):  # decoded batch by batch (kdcore.streaming)
        train.x.decode_on_device = tr.decode == "device" or (
            tr.decode == "auto" and device.type == "cuda"
        )
    elif train.x.element_size() * train.x.nelement() < ON_DEVICE_LIMIT_BYTES:
        train = train.to(device)
    batching = _batching(tr.batch_size, len(train), data.num_classes)
    world, rank = batching.world, batching.rank
    batch_size, steps_per_epoch = batching.batch_size, batching.steps_per_epoch
    loss_fn: DistillLoss | None = None
    s_tap = t_tap = None
    teacher_out: TeacherOutputs | None = None
    if teacher is not None:
        freeze_teacher(teacher).to(device).to(memory_format=memory_format)
        loss_fn = build_loss(spec.distillation).to(device)
        if loss_fn.needs_features:
            sample = model_input(data, train.x[:2]).to(device)
            s_tap, t_tap = _feature_taps(spec, student, teacher, loss_fn, sample)
            loss_fn.to(device)
        loss_fn.bind_train_labels(train.y)
        teacher_out = TeacherOutputs(
            teacher,
            loss_fn,
            spec,
            train,
            device,
            t_tap,
            channels_last,
            batching,
            teacher_cache,
        )
    trainable = list(student.parameters()) + (list(loss_fn.parameters()) if loss_fn else [])
    optimizer = build_optimizer(trainable, tr, fused=device.type == "cuda")
    module: nn.Module = student
    if world > 1:
        module = torch.nn.parallel.DistributedDataParallel(
            student, device_ids=[device.index] if device.type == "cuda" else None
        )
    return _Run(
        spec=spec,
        data=data,
        train=train,
        student=student,
        # the compiled module shares its parameters with `student` (plain state dicts)
        forward=torch.compile(module) if tr.compile else module,
        device=device,
        channels_last=channels_last,
        optimizer=optimizer,
        loss_fn=loss_fn,
        teacher_out=teacher_out,
        s_tap=s_tap,
        t_tap=t_tap,
        world=world,
        rank=rank,
        batch_size=batch_size,
        steps_per_epoch=steps_per_epoch,
        total_steps=tr.epochs * steps_per_epoch,
        phase=phase,
        checkpoint_dir=checkpoint_dir,
        cb=cb,
        log_every=log_every,
    )


def _restore(run: _Run, resume: dict[str, Any]) -> int:
    """Put a checkpoint's state back; returns its step."""
    run.student.load_state_dict(resume["model"])
    run.optimizer.load_state_dict(resume["optimizer"])
    if run.loss_fn is not None and resume.get("loss"):
        run.loss_fn.load_state_dict(resume["loss"])
    torch.set_rng_state(resume["rng"]["torch"])
    if run.device.type == "cuda" and resume["rng"].get("cuda") is not None:
        torch.cuda.set_rng_state(resume["rng"]["cuda"])
    return int(resume["step"])


def _checkpoint_state(run: _Run, result: FitResult, epoch: int, step: int) -> dict[str, Any]:
    """Everything exact resume needs, written out field by field."""
    return {
        "version": CHECKPOINT_VERSION,
        "phase": run.phase,
        "epoch": epoch,
        "step": step,
        "model": run.student.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "loss": run.loss_fn.state_dict() if run.loss_fn is not None else {},
        "scheduler": {"step": step, "total_steps": run.total_steps},
        "scaler": {},  # bf16 autocast needs no loss scaler
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if run.device.type == "cuda" else None,
        },
        "history": result.history,
        "best": run.best.to_checkpoint() if run.best else None,  # its weights too
        "spec": run.spec.model_dump(mode="json"),
    }


def _progress(
    run: _Run,
    result: FitResult,
    clock: _Clock,
    epoch: int,
    step: int,
    losses: dict[str, float] | None = None,
    metrics: dict[str, float] | None = None,
) -> Progress:
    tr = run.spec.training
    return Progress(
        run.phase,
        epoch,
        tr.epochs,
        step,
        run.total_steps,
        lr_at(min(step, run.total_steps - 1), run.total_steps, run.steps_per_epoch, tr),
        losses or {},
        metrics or {},
        # at an epoch's end its own rate (the window restarts with each epoch)
        (metrics or {}).get("images_per_s", clock.rate()),
        clock.eta(step, run.total_steps),
        result.train_time_s + (time.perf_counter() - clock.start),
    )


def _save(run: _Run, result: FitResult, clock: _Clock, name: str, epoch: int, step: int) -> None:
    if run.checkpoint_dir is None or run.rank != 0:  # the ranks' weights are the same
        return
    path = run.checkpoint_dir / name
    save_checkpoint(path, _checkpoint_state(run, result, epoch, step))
    run.cb.on_checkpoint(path, _progress(run, result, clock, epoch, step))
    if run.keep_checkpoints is not None:
        protect = frozenset({run.resumed_epoch} if run.resumed_epoch is not None else ())
        prune_checkpoints(run.checkpoint_dir, run.keep_checkpoints, protect)


def _epoch_batches(
    run: _Run, order: Tensor, start: int
) -> Generator[tuple[int, Tensor, Tensor], None, None]:
    """(i, positions in the split, inputs on the device) for batches `start`.. of the
    epoch's order: sliced from the split in memory, or decoded ahead by the streaming
    path's workers, uint8 until on the device (a resumed epoch reads nothing twice)."""
    steps = range(start, run.steps_per_epoch)
    firsts = [(i * run.world + run.rank) * run.batch_size for i in steps]
    positions = [order[f : f + run.batch_size] for f in firsts]
    images = run.train.x
    if isinstance(images, StreamedImages):
        for i, idx, u8 in zip(steps, positions, images.batches(positions, run.device), strict=True):
            yield i, idx, images.normalise(u8)
        return
    for i, idx in zip(steps, positions, strict=True):
        yield i, idx, images[idx].to(run.device, non_blocking=True)


def _train_step(
    run: _Run, idx: Tensor, x: Tensor, i: int, step: int
) -> tuple[dict[str, Tensor], int]:
    """One optimizer step on batch `i` of the epoch (its samples `idx`, inputs `x`);
    returns the loss terms and the batch size taken by this rank."""
    spec, tr = run.spec, run.spec.training
    y = run.train.y[idx.to(run.train.y.device)].to(run.device)
    if spec.augment.enabled and x.ndim == 4:
        gen = torch.Generator().manual_seed(tr.seed * 7_368_787 + step)
        x = augment_batch(x, spec.augment, gen, spec.dataset.image_size)
    if run.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    set_lr(run.optimizer, lr_at(step, run.total_steps, run.steps_per_epoch, tr))
    with autocast_for(run.device, tr.precision):
        out = run.forward(x)
        if run.teacher_out is not None and run.loss_fn is not None:
            if run.loss_fn.needs_indices:
                run.loss_fn.set_batch(
                    idx, torch.Generator().manual_seed(tr.seed * 9_999_991 + step)
                )
            t_logits, t_feats = run.teacher_out(x, idx, step // run.steps_per_epoch, i)
            s_feats = run.s_tap.collect() if run.s_tap else []
            terms = run.loss_fn(out, t_logits, y, s_feats, t_feats)
        else:
            terms = task_loss(spec.task, out, y)
    run.optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    if run.world > 1 and run.loss_fn is not None:
        _average_grads(run.loss_fn)  # e.g. FitNets adapters: outside the DDP module
    run.optimizer.step()
    return terms, len(idx)


def _train_epoch(
    run: _Run, result: FitResult, clock: _Clock, epoch: int, step: int
) -> tuple[int, int, dict[str, float]]:
    """The rest of epoch `epoch` from `step`: returns (step, images, mean loss terms).
    Losses are read back (a device sync) only every `log_every` steps."""
    tr = run.spec.training
    order = torch.randperm(
        len(run.train), generator=torch.Generator().manual_seed(tr.seed * 1_000_003 + epoch)
    ).to(run.train.x.device)
    images, loss_reads = 0, 0
    loss_sums: dict[str, float] = {}
    if run.loss_fn is not None:
        run.loss_fn.set_epoch(epoch + 1)  # the warmup ramp counts epochs from 1
    batches = contextlib.closing(_epoch_batches(run, order, step % run.steps_per_epoch))
    with batches as ahead:  # a stop leaves here: the streaming workers end with it
        for i, idx, x in ahead:
            if stop_everywhere(run.cb, run.world, step, run.log_every, run.device):
                result.train_time_s += time.perf_counter() - clock.start
                _save(run, result, clock, f"interrupted-step{step}.pt", epoch + 1, step)
                raise Cancelled(f"stopped at step {step}")
            terms, taken = _train_step(run, idx, x, i, step)
            step += 1
            images += taken * run.world  # the global batch: every rank took one
            clock.window_images += taken * run.world
            if step % run.log_every == 0 or i == run.steps_per_epoch - 1:
                losses = {k: v.item() for k, v in terms.items()}  # syncs the device
                if not math.isfinite(losses["loss"]):
                    raise FloatingPointError(
                        f"the loss became {losses['loss']} at step {step}; lower the learning rate"
                    )
                run.cb.on_step(_progress(run, result, clock, epoch + 1, step, losses))
                for k, v in losses.items():
                    loss_sums[k] = loss_sums.get(k, 0.0) + v
                loss_reads += 1
                clock.new_window()
    if run.teacher_out is not None:
        run.teacher_out.end_epoch()  # a whole epoch's crop soft labels go to the store
    return step, images, {k: v / max(1, loss_reads) for k, v in loss_sums.items()}


def _end_epoch(
    run: _Run,
    result: FitResult,
    clock: _Clock,
    epoch: int,
    step: int,
    took: float,
    images: int,
    train_losses: dict[str, float],
) -> None:
    """Evaluate on the held-out split (validation, else test), record and report the
    epoch, note the best one, and checkpoint (on schedule, after the last epoch, and
    when early stopping ends the run)."""
    spec, tr = run.spec, run.spec.training
    held_out = run.data.val if len(run.data.val) else run.data.test
    regression = spec.task == "regression"
    metrics = evaluate(
        run.student, held_out, regression, tr.eval_batch_size, run.device, tr.precision
    )
    metrics["epoch_time_s"] = took
    metrics["images_per_s"] = images / max(took, 1e-9)
    result.history.append(
        {"epoch": epoch + 1, "step": step, **metrics, "train_losses": train_losses}
    )
    run.cb.on_epoch_end(_progress(run, result, clock, epoch + 1, step, train_losses, metrics))
    if run.best is not None:
        run.best.update(epoch + 1, metrics, run.student)  # before the checkpoint holds it
    stopping = run.best is not None and run.best.stopped_at is not None
    if (epoch + 1) % spec.checkpoint_every_epochs == 0 or epoch + 1 == tr.epochs or stopping:
        _save(run, result, clock, f"epoch{epoch + 1}.pt", epoch + 1, step)


def _select(run: _Run, result: FitResult) -> None:
    """The weights the job keeps: the best validation epoch's (`select: best`), or the
    last's; and where early stopping ended the run."""
    last = result.history[-1]["epoch"] if result.history else None
    result.selected_epoch = last
    if run.best is None:
        return
    result.stopped_at_epoch = run.best.stopped_at
    if run.spec.selects_best and run.best.state is not None:
        run.student.load_state_dict(run.best.state)
        result.selected_epoch = run.best.epoch


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
    from `resume` (a checkpoint dict) if given: setup, restore, then per epoch train,
    evaluate, report and checkpoint. With `keep_checkpoints` N, each save deletes all
    but the newest N `epochN.pt` (and the one resumed from). With `teacher_cache` (a
    folder), the teacher's outputs are kept there for later jobs (kdcore.teacher_cache)."""
    tr = spec.training
    cb = callbacks or Callbacks()
    run = _setup(
        spec, data, student, teacher, device, checkpoint_dir, cb, phase, log_every, teacher_cache
    )
    run.keep_checkpoints = keep_checkpoints
    run.resumed_epoch = int(resume["epoch"]) if resume and "epoch" in resume else None
    step = _restore(run, resume) if resume is not None else 0
    result = FitResult(
        student,
        history=list(resume.get("history", [])) if resume else [],
        used_teacher_cache=bool(run.teacher_out and run.teacher_out.cache is not None),
        teacher_forward=run.teacher_out.forward if run.teacher_out else None,
    )
    clock = _Clock(resumed_step=step)
    # selection and early stopping read the validation split only (never the test's)
    run.best = BestEpoch.for_spec(spec) if len(data.val) else None
    if run.best is not None:
        run.best.restore(resume.get("best") if resume else None)
    student.train()
    for epoch in range(step // run.steps_per_epoch, tr.epochs):
        if run.best is not None and run.best.stopped_at is not None:
            break  # resumed from the checkpoint that early stopping wrote
        epoch_start = time.perf_counter()
        step, images, train_losses = _train_epoch(run, result, clock, epoch, step)
        result.images_seen += images
        took = time.perf_counter() - epoch_start
        _end_epoch(run, result, clock, epoch, step, took, images, train_losses)
        if run.best is not None and run.best.stopped_at is not None:
            break
    result.train_time_s += time.perf_counter() - clock.start
    result.steps = step
    _select(run, result)
    if run.teacher_out is not None and run.teacher_out.store is not None:
        result.teacher_store = run.teacher_out.store.report()
    for tap in (run.s_tap, run.t_tap):
        if tap:
            tap.remove()
    return result
