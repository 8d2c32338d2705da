"""Where a model runs at which precision: bf16 autocast or fp32, and inference in chunks."""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 / AMX: there bf16 convolutions are much faster than fp32 ones;
    elsewhere oneDNN emulates bf16 and it is slower."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def uses_bf16(device: torch.device, precision: str) -> bool:
    """`auto` means bf16 autocast (fp32 master weights) on CUDA and on CPUs with native
    bf16; `fp32` never autocasts; `bf16` always does."""
    if precision == "auto":
        return device.type == "cuda" or cpu_has_native_bf16()
    return precision == "bf16"


def autocast_for(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if uses_bf16(device, precision):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.inference_mode()
def predict(
    model: nn.Module, x: Tensor, batch_size: int, device: torch.device, precision: str = "fp32"
) -> Tensor:
    was_training = model.training
    model.eval()
    outs = []
    with autocast_for(device, precision):
        for chunk in x.split(batch_size):
            outs.append(model(chunk.to(device)).float())
    model.train(was_training)
    return torch.cat(outs)
