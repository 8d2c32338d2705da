"""Measurements for report.json: held-out quality, agreement, size and CPU latency."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch import nn

from kdcore.data import Split
from kdcore.models import count_parameters
from kdcore.trainer import predict


def cpu_latency_ms(
    model: nn.Module, input_shape: tuple[int, ...], batch: int, repeats: int = 10
) -> float:
    """Median wall time of one forward pass on the CPU, in milliseconds."""
    model = model.to("cpu").eval()
    x = torch.randn(batch, *input_shape)
    times = []
    with torch.inference_mode():
        for _ in range(2):
            model(x)  # warm-up: allocator, oneDNN primitive caches
        for _ in range(repeats):
            t = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def model_summary(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, Any]:
    return {
        "parameters": count_parameters(model),
        "latency_ms_batch1": round(cpu_latency_ms(model, input_shape, 1), 4),
        "latency_ms_batch64": round(cpu_latency_ms(model, input_shape, 64), 4),
    }


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
