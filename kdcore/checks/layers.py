"""An architecture's layers with their output shapes (the names feature methods take),
listed on the meta device: shapes without memory (a real vgg16 at 224 px grew the API
by about 0.5 GB a call), and an op with no meta kernel is refused, not run for real."""

from __future__ import annotations

from typing import Any

import torch

from kdcore.image.features import layer_shapes
from kdcore.models import build_model


def model_layers(
    arch: str, classes: int, input_shape: tuple[int, ...], config: dict[str, Any] | None
) -> list[tuple[str, str, list[int]]]:
    """(name, type, output shape with the batch first) of every layer. Raises
    ValueError when the model cannot be listed without running it."""
    try:
        with torch.device("meta"):
            model = build_model(arch, classes, input_shape, config)
        return layer_shapes(model, torch.empty(2, *input_shape, device="meta"))
    except (NotImplementedError, RuntimeError, ValueError, TypeError) as exc:
        raise ValueError(
            f"the layers of {arch} cannot be listed without running it: {exc}"[:300]
        ) from None
