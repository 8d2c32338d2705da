"""Optimizer and learning-rate schedule. The schedule is a pure function of the
global step, so resuming needs nothing but the step number."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from kdcore.spec import TrainingSpec


def build_optimizer(
    params: Iterable[nn.Parameter], spec: TrainingSpec, fused: bool = False
) -> torch.optim.Optimizer:
    """SGD or AdamW. `fused` (CUDA parameters): one kernel for the whole update instead
    of a few per parameter tensor."""
    params = list(params)
    # no weight decay on biases and norm parameters (1-D tensors), as is usual for CNNs
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": spec.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if spec.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=spec.lr, fused=fused or None)
    return torch.optim.SGD(
        groups,
        lr=spec.lr,
        momentum=spec.momentum,
        nesterov=spec.nesterov and spec.momentum > 0,
        fused=fused or None,
    )


def lr_at(step: int, total_steps: int, steps_per_epoch: int, spec: TrainingSpec) -> float:
    """Learning rate for the optimizer step `step` (0-based) of `total_steps`."""
    base = spec.lr
    warmup = int(spec.warmup_epochs * steps_per_epoch)
    if spec.schedule == "onecycle":
        warmup = warmup or max(1, int(0.3 * total_steps))
        if step < warmup:
            return base / 25 + (base - base / 25) * step / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return base / 1e4 + (base - base / 1e4) * 0.5 * (1 + math.cos(math.pi * progress))
    if step < warmup:
        return base * (step + 1) / warmup
    if spec.schedule == "cosine":
        progress = (step - warmup) / max(1, total_steps - warmup)
        return base * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    if spec.schedule == "step":
        return base * spec.gamma ** ((step // steps_per_epoch) // spec.step_size)
    return base


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
