"""The one training loop, readable in one sitting, for every task.

A task (kdcore.engine.task.Task: images in kdcore.image.trainer, text in kdcore.text.trainer)
says what a batch is, its loss, its evaluation and its own state; the loop owns the
rest, once for all tasks: epochs, the learning-rate schedule, the optimizer step, the
cooperative stop check, the checkpoint dict with every RNG, exact resume, progress
(a rate with its unit), the best epoch and early stopping, pruning old checkpoints
(never the one resumed from), and gradient averaging across data-parallel ranks. A
model sharded across the ranks (kdcore.engine.sharding) is read and written through
`Weights`, so checkpoints and the best epoch are the same whole states either way.

Everything random is a function of (seed, epoch, step): the task seeds its batch order
per epoch, the global torch RNG (dropout) and CUDA's are saved in each checkpoint.
That is what makes a resume bit-exact.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdcore.engine.callbacks import Callbacks, Progress
from kdcore.engine.optim import build_optimizer, lr_at, set_lr
from kdcore.engine.selection import BestEpoch
from kdcore.engine.sharding import Weights, weights_of
from kdcore.engine.task import Task
from kdcore.errors import Cancelled
from kdcore.io.checkpoints import prune_checkpoints, save_checkpoint
from kdcore.spec import JobSpec

CHECKPOINT_VERSION = 1


@dataclass
class LoopResult:
    """What a run of the loop did. `seen` counts the task's unit (images, tokens)."""

    unit: str
    history: list[dict[str, Any]] = field(default_factory=list)
    train_time_s: float = 0.0
    seen: int = 0
    steps: int = 0
    selected_epoch: int | None = None  # whose weights the student holds at the end
    stopped_at_epoch: int | None = None  # early stopping ended the run after this epoch

    @property
    def rate(self) -> float:
        return self.seen / self.train_time_s if self.train_time_s > 0 else 0.0


def ranks() -> tuple[int, int]:
    """(world size, this rank): (1, 0) unless kdcore.runs.distributed started a group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


def data_parallel(student: nn.Module, device: torch.device) -> nn.Module:
    """The module a step calls: the student itself, or with several ranks the student
    in DistributedDataParallel (which averages its gradients)."""
    if ranks()[0] == 1:
        return student
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(student, device_ids=ids)


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
class _Clock:
    """Elapsed time, the rate over the last logging window, and the ETA."""

    resumed_step: int
    start: float = field(default_factory=time.perf_counter)
    window_seen: int = 0
    window_start: float = field(default_factory=time.perf_counter)

    def rate(self) -> float:
        return self.window_seen / max(1e-9, time.perf_counter() - self.window_start)

    def new_window(self) -> None:
        self.window_seen, self.window_start = 0, time.perf_counter()

    def eta(self, step: int, total_steps: int) -> float:
        done = max(1, step - self.resumed_step)
        return (total_steps - step) * (time.perf_counter() - self.start) / done


@dataclass
class _Loop:
    """What one run of the loop trains with."""

    spec: JobSpec
    task: Task
    optimizer: torch.optim.Optimizer
    device: torch.device
    phase: str
    checkpoint_dir: Path | None
    cb: Callbacks
    log_every: int
    keep_checkpoints: int | None
    world: int
    rank: int
    total_steps: int
    result: LoopResult
    clock: _Clock
    weights: Weights  # the student's and optimizer's states, whole or sharded
    best: BestEpoch | None = None  # the best validation epoch so far, and early stopping
    resumed_epoch: int | None = None  # its checkpoint outlives the pruning


def _progress(
    loop: _Loop,
    epoch: int,
    step: int,
    losses: dict[str, float] | None = None,
    metrics: dict[str, float] | None = None,
) -> Progress:
    tr, unit = loop.spec.training, loop.task.unit
    # at an epoch's end its own rate (the window restarts with each epoch)
    rate = (metrics or {}).get(f"{unit}_per_s", loop.clock.rate())
    return Progress(
        loop.phase,
        epoch,
        tr.epochs,
        step,
        loop.total_steps,
        lr_at(min(step, loop.total_steps - 1), loop.total_steps, loop.task.steps_per_epoch, tr),
        losses or {},
        metrics or {},
        rate if unit == "images" else 0.0,
        loop.clock.eta(step, loop.total_steps),
        loop.result.train_time_s + (time.perf_counter() - loop.clock.start),
        tokens_per_s=rate if unit == "tokens" else None,
    )


def _checkpoint_state(loop: _Loop, epoch: int, step: int) -> dict[str, Any]:
    """Everything exact resume needs, written out field by field. A sharded model's
    and its optimizer's states are whole, keyed by parameter name, so that any number
    of ranks can resume from them."""
    extra = loop.task.extra
    model, optimizer = loop.weights.checkpoint()
    return {
        "version": CHECKPOINT_VERSION,
        "phase": loop.phase,
        "epoch": epoch,
        "step": step,
        "model": model,
        "optimizer": optimizer,
        "loss": extra.state_dict() if extra is not None else {},
        "scheduler": {"step": step, "total_steps": loop.total_steps},
        "scaler": {},  # bf16 autocast needs no loss scaler
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if loop.device.type == "cuda" else None,
        },
        "history": loop.result.history,
        "best": loop.best.to_checkpoint() if loop.best else None,  # its weights too
        "spec": loop.spec.model_dump(mode="json"),
    }


def _restore(loop: _Loop, resume: dict[str, Any]) -> int:
    """Put a checkpoint's state back; returns its step."""
    loop.weights.restore(resume["model"], resume["optimizer"])
    if loop.task.extra is not None and resume.get("loss"):
        loop.task.extra.load_state_dict(resume["loss"])
    torch.set_rng_state(resume["rng"]["torch"])
    if loop.device.type == "cuda" and resume["rng"].get("cuda") is not None:
        torch.cuda.set_rng_state(resume["rng"]["cuda"])
    loop.result.history = list(resume.get("history", []))
    if loop.best is not None:
        loop.best.restore(resume.get("best"))
    loop.resumed_epoch = int(resume["epoch"]) if "epoch" in resume else None
    return int(resume["step"])


def _save(loop: _Loop, name: str, epoch: int, step: int) -> None:
    if loop.checkpoint_dir is None:
        return
    if loop.rank != 0 and not loop.weights.sharded:  # the ranks' weights are the same
        return
    state = _checkpoint_state(loop, epoch, step)  # sharded: every rank gathers, rank 0 keeps
    if loop.rank != 0:
        return
    path = loop.checkpoint_dir / name
    save_checkpoint(path, state)
    loop.cb.on_checkpoint(path, _progress(loop, epoch, step))
    if loop.keep_checkpoints is not None:
        protect = frozenset({loop.resumed_epoch} if loop.resumed_epoch is not None else ())
        prune_checkpoints(loop.checkpoint_dir, loop.keep_checkpoints, protect)


def _train_step(loop: _Loop, batch: Any, step: int) -> tuple[dict[str, Any], int]:
    """One optimizer step; returns the loss terms and what this rank took (its unit)."""
    tr, task = loop.spec.training, loop.task
    set_lr(loop.optimizer, lr_at(step, loop.total_steps, task.steps_per_epoch, tr))
    terms, taken = task.loss(batch, step)
    loop.optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    if loop.world > 1 and task.extra is not None:
        _average_grads(task.extra)  # e.g. FitNets adapters: outside the DDP module
    loop.optimizer.step()
    return terms, taken


def _global_losses(loop: _Loop, terms: dict[str, Any]) -> dict[str, float]:
    """The loss terms of the global batch: each rank's, averaged over the ranks (every
    rank reads them at the same steps), so N ranks report what one process would."""
    values = torch.stack([v.detach().float().reshape(()) for v in terms.values()])
    if loop.world > 1:
        torch.distributed.all_reduce(values)
        values /= loop.world
    return dict(zip(terms, values.tolist(), strict=True))


def _train_epoch(loop: _Loop, epoch: int, step: int) -> tuple[int, int, dict[str, float]]:
    """The rest of epoch `epoch` from `step`: returns (step, units seen, mean loss
    terms). Losses are read back (a device sync) only every `log_every` steps."""
    task, clock = loop.task, loop.clock
    seen, loss_reads = 0, 0
    loss_sums: dict[str, float] = {}
    task.begin_epoch(epoch)
    last = task.steps_per_epoch - 1
    # a stop leaves here: a task's background readers end with its batches
    with contextlib.closing(task.batches(epoch, step % task.steps_per_epoch)) as ahead:
        for i, batch in ahead:
            if stop_everywhere(loop.cb, loop.world, step, loop.log_every, loop.device):
                loop.result.train_time_s += time.perf_counter() - clock.start
                _save(loop, f"interrupted-step{step}.pt", epoch + 1, step)
                raise Cancelled(f"stopped at step {step}")
            terms, taken = _train_step(loop, batch, step)
            step += 1
            seen += taken * loop.world  # the global batch: every rank took one
            clock.window_seen += taken * loop.world
            if step % loop.log_every == 0 or i == last:
                losses = _global_losses(loop, terms)  # syncs the device
                if not math.isfinite(losses["loss"]):
                    raise FloatingPointError(
                        f"the loss became {losses['loss']} at step {step}; lower the learning rate"
                    )
                loop.cb.on_step(_progress(loop, epoch + 1, step, losses))
                for k, v in losses.items():
                    loss_sums[k] = loss_sums.get(k, 0.0) + v
                loss_reads += 1
                clock.new_window()
    task.end_epoch()
    return step, seen, {k: v / max(1, loss_reads) for k, v in loss_sums.items()}


def _end_epoch(
    loop: _Loop, epoch: int, step: int, took: float, seen: int, train_losses: dict[str, float]
) -> None:
    """Evaluate on the held-out split, record and report the epoch, note the best one,
    and checkpoint (on schedule, after the last epoch, and when early stopping ends
    the run)."""
    spec = loop.spec
    metrics = loop.task.evaluate()
    metrics["epoch_time_s"] = took
    metrics[f"{loop.task.unit}_per_s"] = seen / max(took, 1e-9)
    loop.result.history.append(
        {"epoch": epoch + 1, "step": step, **metrics, "train_losses": train_losses}
    )
    loop.cb.on_epoch_end(_progress(loop, epoch + 1, step, train_losses, metrics))
    if loop.best is not None:  # before the checkpoint
        loop.best.update(epoch + 1, _agreed(loop, metrics), loop.weights.model_state)
    stopping = loop.best is not None and loop.best.stopped_at is not None
    last = epoch + 1 == spec.training.epochs
    if (epoch + 1) % spec.checkpoint_every_epochs == 0 or last or stopping:
        _save(loop, f"epoch{epoch + 1}.pt", epoch + 1, step)


def _agreed(loop: _Loop, metrics: dict[str, float]) -> dict[str, float]:
    """Rank 0's metrics on every rank of a sharded model: the ranks then take the same
    best epoch and stop together (gathering its weights is a collective)."""
    if not loop.weights.sharded or loop.world == 1:
        return metrics
    names = sorted(metrics)
    values = torch.tensor([metrics[k] for k in names], dtype=torch.float64, device=loop.device)
    torch.distributed.broadcast(values, src=0)
    return dict(zip(names, values.tolist(), strict=True))


def _select(loop: _Loop) -> None:
    """The weights the job keeps: the best validation epoch's (`select: best`), or the
    last's; and where early stopping ended the run."""
    result = loop.result
    result.selected_epoch = result.history[-1]["epoch"] if result.history else None
    if loop.best is None:
        return
    result.stopped_at_epoch = loop.best.stopped_at
    if loop.spec.selects_best and loop.best.state is not None:
        loop.weights.load_model(loop.best.state)
        result.selected_epoch = loop.best.epoch


def train_loop(
    spec: JobSpec,
    task: Task,
    device: torch.device,
    checkpoint_dir: Path | None,
    callbacks: Callbacks | None = None,
    *,
    phase: str = "train",
    resume: dict[str, Any] | None = None,
    log_every: int = 10,
    keep_checkpoints: int | None = None,
) -> LoopResult:
    """Train `task.student` for `spec.training.epochs`, from `resume` (a checkpoint
    dict) if given: restore, then per epoch train, evaluate, report and checkpoint.
    With `keep_checkpoints` N, each save deletes all but the newest N `epochN.pt` (and
    the one resumed from). Selection and early stopping read the validation split only
    (a task without one keeps the last epoch)."""
    tr = spec.training
    trainable = list(task.student.parameters())
    if task.extra is not None:
        trainable += list(task.extra.parameters())
    world, rank = ranks()
    optimizer = build_optimizer(trainable, tr, fused=device.type == "cuda")
    loop = _Loop(
        spec=spec,
        task=task,
        optimizer=optimizer,
        device=device,
        phase=phase,
        checkpoint_dir=checkpoint_dir,
        cb=callbacks or Callbacks(),
        log_every=log_every,
        keep_checkpoints=keep_checkpoints,
        world=world,
        rank=rank,
        total_steps=tr.epochs * task.steps_per_epoch,
        result=LoopResult(task.unit),
        clock=_Clock(resumed_step=0),
        weights=weights_of(task.student, optimizer),
        best=BestEpoch.for_spec(spec) if task.has_validation else None,
    )
    step = _restore(loop, resume) if resume is not None else 0
    loop.clock = _Clock(resumed_step=step)
    task.student.train()
    for epoch in range(step // task.steps_per_epoch, tr.epochs):
        if loop.best is not None and loop.best.stopped_at is not None:
            break  # resumed from the checkpoint that early stopping wrote
        epoch_start = time.perf_counter()
        step, seen, train_losses = _train_epoch(loop, epoch, step)
        loop.result.seen += seen
        _end_epoch(loop, epoch, step, time.perf_counter() - epoch_start, seen, train_losses)
        if loop.best is not None and loop.best.stopped_at is not None:
            break
    loop.result.train_time_s += time.perf_counter() - loop.clock.start
    loop.result.steps = step
    _select(loop)
    return loop.result
