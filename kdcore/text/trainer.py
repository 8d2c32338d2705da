"""The training loop for text (causal LMs and text classifiers), the image loop's twin
(kdcore.trainer): batch order a function of (seed, epoch), the global RNG saved in
each checkpoint, so a resumed run is exact; a frozen teacher in eval mode, or its top-k
logits read from a memory-mapped cache built once (kdcore.text.losses)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from kdcore.callbacks import Callbacks, Progress
from kdcore.checkpoints import prune_checkpoints, save_checkpoint
from kdcore.errors import Cancelled
from kdcore.losses import build_loss, task_loss
from kdcore.optim import build_optimizer, lr_at, set_lr
from kdcore.precision import autocast_for
from kdcore.spec import JobSpec
from kdcore.text.evaluate import evaluate_text
from kdcore.text.losses import lm_loss, teacher_topk, token_kd_loss
from kdcore.text.models import enable_checkpointing
from kdcore.text.rows import TextRows, TextSplit
from kdcore.trainer import stop_everywhere

CHECKPOINT_VERSION = 1


@dataclass
class TextFit:
    history: list[dict[str, Any]] = field(default_factory=list)
    train_time_s: float = 0.0
    tokens_seen: int = 0
    steps: int = 0
    teacher_topk_cache: bool = False

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_seen / self.train_time_s if self.train_time_s > 0 else 0.0


class TopkCache:
    """The teacher's top-k logits of every training row, computed once into
    memory-mapped fp16 values and int32 ids (N x L x k) in the job folder; a resumed job
    reuses them."""

    def __init__(
        self,
        folder: Path,
        teacher: nn.Module,
        train: TextRows,
        k: int,
        spec: JobSpec,
        device: torch.device,
    ):
        folder.mkdir(parents=True, exist_ok=True)
        shape = (len(train), train.seq_len, k)
        done = folder / "complete"
        if done.exists() and done.read_text() == str(shape):
            self.values = np.load(folder / "values.npy", mmap_mode="r", allow_pickle=False)
            self.indices = np.load(folder / "indices.npy", mmap_mode="r", allow_pickle=False)
            return
        values = np.lib.format.open_memmap(folder / "values.npy", "w+", np.float16, shape)
        indices = np.lib.format.open_memmap(folder / "indices.npy", "w+", np.int32, shape)
        teacher.eval()
        size = spec.training.eval_batch_size
        with torch.inference_mode(), autocast_for(device, spec.training.precision):
            for first in range(0, len(train), size):
                rows = train.rows(torch.arange(first, min(first + size, len(train))))
                logits = teacher(
                    input_ids=rows.ids.to(device), attention_mask=rows.attention.to(device)
                ).logits
                v, i = teacher_topk(logits, k)
                values[first : first + len(rows)] = v.cpu().numpy()
                indices[first : first + len(rows)] = i.cpu().numpy()
        values.flush()
        indices.flush()
        done.write_text(str(shape))
        self.values, self.indices = values, indices

    def __call__(self, idx: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
        rows = np.sort(idx.numpy())
        order = torch.from_numpy(np.argsort(np.argsort(idx.numpy())))
        values = torch.from_numpy(np.ascontiguousarray(self.values[rows]))[order]
        indices = torch.from_numpy(np.ascontiguousarray(self.indices[rows]))[order]
        return values.to(device), indices.to(device)


@dataclass
class _Run:
    spec: JobSpec
    train: TextRows
    val: TextRows
    student: nn.Module
    forward: nn.Module  # the student, in DistributedDataParallel with several ranks
    teacher: nn.Module | None
    topk: TopkCache | None
    device: torch.device
    optimizer: torch.optim.Optimizer
    logit_loss: Any  # text_classification with a teacher: kdcore.losses (kd, dkd, dist)
    batch_size: int  # per rank
    world: int
    rank: int
    steps_per_epoch: int
    total_steps: int
    phase: str
    checkpoint_dir: Path | None
    cb: Callbacks
    log_every: int
    keep_checkpoints: int | None = None  # None: keep every epochN.pt


def _loss(run: _Run, rows: TextSplit, idx: Tensor) -> dict[str, Tensor]:
    spec, d = run.spec, run.spec.distillation
    ids, attention = rows.ids.to(run.device), rows.attention.to(run.device)
    logits = run.forward(input_ids=ids, attention_mask=attention).logits
    if spec.task == "text_classification":
        labels = rows.labels.to(run.device)  # type: ignore[union-attr]
        if run.teacher is None:
            return task_loss("classification", logits, labels)
        with torch.inference_mode():
            t_logits = run.teacher(input_ids=ids, attention_mask=attention).logits
        return run.logit_loss(logits, t_logits.clone(), labels, [], [])
    targets = rows.targets.to(run.device)
    teacher: Tensor | tuple[Tensor, Tensor] | None = None
    if run.topk is not None:
        teacher = run.topk(idx, run.device)
    elif run.teacher is not None:
        with torch.inference_mode():
            teacher = run.teacher(input_ids=ids, attention_mask=attention).logits.clone()
    if teacher is None:  # the teacher's own training, the baseline, sequence-level KD
        return lm_loss(logits, ids, targets)
    return token_kd_loss(
        d.method, logits, teacher, ids, targets, d.temperature, d.ce_weight, d.kd_weight, d.jsd_beta
    )


def _state(run: _Run, fit: TextFit, epoch: int, step: int) -> dict[str, Any]:
    return {
        "version": CHECKPOINT_VERSION,
        "phase": run.phase,
        "epoch": epoch,
        "step": step,
        "model": run.student.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "loss": run.logit_loss.state_dict() if run.logit_loss is not None else {},
        "rng": {"torch": torch.get_rng_state()},
        "history": fit.history,
        "spec": run.spec.model_dump(mode="json"),
    }


def _save(run: _Run, fit: TextFit, name: str, epoch: int, step: int, progress: Progress) -> None:
    if run.checkpoint_dir is None or run.rank != 0:  # the ranks' weights are the same
        return
    path = run.checkpoint_dir / name
    save_checkpoint(path, _state(run, fit, epoch, step))
    run.cb.on_checkpoint(path, progress)
    if run.keep_checkpoints is not None:
        prune_checkpoints(run.checkpoint_dir, run.keep_checkpoints, frozenset())


def _progress(
    run: _Run,
    fit: TextFit,
    epoch: int,
    step: int,
    start: float,
    losses: dict[str, float] | None = None,
    metrics: dict[str, float] | None = None,
) -> Progress:
    tr = run.spec.training
    elapsed = fit.train_time_s + time.perf_counter() - start
    rate = fit.tokens_seen / max(elapsed, 1e-9)
    eta = (run.total_steps - step) * elapsed / max(step, 1)
    lr = lr_at(min(step, run.total_steps - 1), run.total_steps, run.steps_per_epoch, tr)
    return Progress(
        run.phase,
        epoch,
        tr.epochs,
        step,
        run.total_steps,
        lr,
        losses or {},
        metrics or {},
        0.0,
        eta,
        elapsed,
        tokens_per_s=rate,
    )


def _epoch(
    run: _Run, fit: TextFit, epoch: int, step: int, start: float
) -> tuple[int, dict[str, float]]:
    tr = run.spec.training
    order = torch.randperm(
        len(run.train), generator=torch.Generator().manual_seed(tr.seed * 1_000_003 + epoch)
    )
    sums: dict[str, float] = {}
    reads = 0
    if run.logit_loss is not None:
        run.logit_loss.set_epoch(epoch + 1)
    for i in range(step % run.steps_per_epoch, run.steps_per_epoch):
        if stop_everywhere(run.cb, run.world, step, run.log_every, run.device):
            fit.train_time_s += time.perf_counter() - start
            _save(
                run,
                fit,
                f"interrupted-step{step}.pt",
                epoch + 1,
                step,
                _progress(run, fit, epoch + 1, step, time.perf_counter()),
            )
            raise Cancelled(f"stopped at step {step}")
        first = (i * run.world + run.rank) * run.batch_size  # this rank's slice
        idx = order[first : first + run.batch_size]
        rows = run.train.rows(idx)
        set_lr(run.optimizer, lr_at(step, run.total_steps, run.steps_per_epoch, tr))
        with autocast_for(run.device, tr.precision):
            terms = _loss(run, rows, idx)
        run.optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        run.optimizer.step()
        step += 1
        fit.tokens_seen += int(rows.attention.sum()) * run.world  # every rank took one
        if step % run.log_every == 0 or i == run.steps_per_epoch - 1:
            losses = {k: float(v.item()) for k, v in terms.items()}
            if not math.isfinite(losses["loss"]):
                raise FloatingPointError(
                    f"the loss became {losses['loss']} at step {step}; lower the learning rate"
                )
            run.cb.on_step(_progress(run, fit, epoch + 1, step, start, losses))
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v
            reads += 1
    return step, {k: v / max(1, reads) for k, v in sums.items()}


def _teacher_side(
    spec: JobSpec,
    teacher: nn.Module | None,
    train: TextRows,
    device: torch.device,
    topk_dir: Path | None,
    world: int,
    rank: int,
) -> tuple[Any, TopkCache | None]:
    """The frozen teacher, the classifier's logit loss, and the top-k cache (built by
    rank 0, read by the others)."""
    if teacher is None:
        return None, None
    d = spec.distillation
    teacher.to(device).eval().requires_grad_(False)  # never trains, BatchNorm/dropout off
    logit_loss = None
    if spec.task == "text_classification":
        logit_loss = build_loss(d).to(device)
        assert train.labels is not None
        logit_loss.bind_train_labels(train.labels)
    topk = None
    if spec.task == "causal_lm" and d.teacher_topk and topk_dir is not None:
        if rank != 0:
            torch.distributed.barrier()  # rank 0 builds the cache; the others read it
        topk = TopkCache(topk_dir, teacher, train, d.teacher_topk, spec, device)
        if rank == 0 and world > 1:
            torch.distributed.barrier()
    return logit_loss, topk


def _restore(run: _Run, fit: TextFit, resume: dict[str, Any]) -> int:
    """Put a checkpoint's state back; returns its step."""
    run.student.load_state_dict(resume["model"])
    run.optimizer.load_state_dict(resume["optimizer"])
    if run.logit_loss is not None and resume.get("loss"):
        run.logit_loss.load_state_dict(resume["loss"])
    torch.set_rng_state(resume["rng"]["torch"])
    fit.history = list(resume.get("history", []))
    return int(resume["step"])


def fit_text(
    spec: JobSpec,
    train: TextRows,
    val: TextRows,
    student: nn.Module,
    teacher: nn.Module | None,
    device: torch.device,
    checkpoint_dir: Path | None,
    callbacks: Callbacks | None = None,
    phase: str = "train",
    resume: dict[str, Any] | None = None,
    topk_dir: Path | None = None,
    log_every: int = 10,
    keep_checkpoints: int | None = None,
) -> TextFit:
    """Train `student` on `train` for spec.training.epochs (distilling `teacher` when
    given), evaluating on `val` after each epoch; from `resume` (a checkpoint) if given."""
    tr = spec.training
    student.to(device).train()
    if tr.gradient_checkpointing:
        enable_checkpointing(student)
    world, rank = 1, 0
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    logit_loss, topk = _teacher_side(spec, teacher, train, device, topk_dir, world, rank)
    params = list(student.parameters()) + (list(logit_loss.parameters()) if logit_loss else [])
    # each rank takes its slice of every global batch; DDP averages the gradients
    batch_size = max(1, min(tr.batch_size, len(train) // world))
    steps = max(1, len(train) // (batch_size * world))
    forward: nn.Module = student
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        forward = torch.nn.parallel.DistributedDataParallel(student, device_ids=ids)
    run = _Run(
        spec,
        train,
        val,
        student,
        forward,
        teacher,
        topk,
        device,
        build_optimizer(params, tr, fused=device.type == "cuda"),
        logit_loss,
        batch_size,
        world,
        rank,
        steps,
        tr.epochs * steps,
        phase,
        checkpoint_dir,
        callbacks or Callbacks(),
        log_every,
    )
    run.keep_checkpoints = keep_checkpoints
    fit = TextFit(teacher_topk_cache=topk is not None)
    step = _restore(run, fit, resume) if resume is not None else 0
    start = time.perf_counter()
    for epoch in range(step // steps, tr.epochs):
        step, losses = _epoch(run, fit, epoch, step, start)
        metrics = evaluate_text(student, val if len(val) else train, spec, device)
        fit.history.append({"epoch": epoch + 1, "step": step, **metrics, "train_losses": losses})
        progress = _progress(run, fit, epoch + 1, step, start, losses, metrics)
        run.cb.on_epoch_end(progress)
        if (epoch + 1) % spec.checkpoint_every_epochs == 0 or epoch + 1 == tr.epochs:
            _save(run, fit, f"epoch{epoch + 1}.pt", epoch + 1, step, progress)
    fit.train_time_s += time.perf_counter() - start
    fit.steps = step
    student.eval()
    return fit
