"""Held-out measures of a text model: perplexity over the predicted tokens (causal LMs)
or accuracy (classifiers), the student's top-1 agreement with the teacher per token,
and inference tokens/s."""

from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdcore.engine.precision import autocast_for
from kdcore.engine.sharding import no_grad_for
from kdcore.spec import JobSpec
from kdcore.text.rows import TextRows


def _logits(model: nn.Module, split: TextRows, size: int, device: torch.device, precision: str):
    was = model.training
    model.eval()
    try:
        for first in range(0, len(split), size):
            rows = split.rows(torch.arange(first, min(first + size, len(split))))
            with no_grad_for(model), autocast_for(device, precision):
                ids, attention = rows.ids.to(device), rows.attention.to(device)
                logits = model(input_ids=ids, attention_mask=attention).logits.float()
            yield rows, logits
    finally:
        model.train(was)


def evaluate_text(
    model: nn.Module, split: TextRows, spec: JobSpec, device: torch.device
) -> dict[str, float]:
    """{"perplexity", "loss"} for a causal LM, {"accuracy", "loss"} for a classifier."""
    tr = spec.training
    total, count, correct = 0.0, 0, 0
    for rows, logits in _logits(model, split, tr.eval_batch_size, device, tr.precision):
        if spec.task == "text_classification":
            labels = rows.labels.to(device)  # type: ignore[union-attr]
            total += float(F.cross_entropy(logits, labels, reduction="sum"))
            correct += int((logits.argmax(-1) == labels).sum())
            count += len(labels)
            continue
        mask = rows.targets[:, 1:].to(device)
        ids = rows.ids[:, 1:].to(device)
        total += float(F.cross_entropy(logits[:, :-1][mask], ids[mask], reduction="sum"))
        count += int(mask.sum())
    loss = total / max(count, 1)
    if spec.task == "text_classification":
        return {"accuracy": correct / max(count, 1), "loss": loss}
    return {"perplexity": math.exp(min(loss, 50.0)), "loss": loss}


def agreement(
    student: nn.Module, teacher: nn.Module, split: TextRows, spec: JobSpec, device: torch.device
) -> float:
    """The share of predicted tokens (classifier: of rows) where the student's top-1 is
    the teacher's."""
    tr = spec.training
    same = total = 0
    pairs = zip(
        _logits(student, split, tr.eval_batch_size, device, tr.precision),
        _logits(teacher, split, tr.eval_batch_size, device, tr.precision),
        strict=True,
    )
    for (rows, s), (_, t) in pairs:
        hit: Tensor = s.argmax(-1) == t.argmax(-1)
        if spec.task == "causal_lm":
            hit = hit[:, :-1][rows.targets[:, 1:].to(device)]
        same += int(hit.sum())
        total += hit.numel()
    return same / max(total, 1)


def tokens_per_s(model: nn.Module, split: TextRows, spec: JobSpec, device: torch.device) -> float:
    """Inference throughput over the held-out rows (real tokens, padding not counted)."""
    if len(split) == 0:
        return 0.0
    list(
        _logits(
            model, split.rows(torch.arange(min(2, len(split)))), 2, device, spec.training.precision
        )
    )  # warm-up
    start = time.perf_counter()
    for _ in _logits(model, split, spec.training.eval_batch_size, device, spec.training.precision):
        pass
    if device.type == "cuda":
        torch.cuda.synchronize()
    return split.real_tokens() / max(time.perf_counter() - start, 1e-9)


def model_size(model: nn.Module) -> dict[str, Any]:
    """Parameters and the bytes its weights take in safetensors (a tied head counted
    once, as it is stored)."""
    unique = {p.data_ptr(): p for p in model.parameters()}.values()
    return {
        "parameters": sum(p.numel() for p in unique),
        "bytes_on_disk": sum(p.numel() * p.element_size() for p in unique),
    }
