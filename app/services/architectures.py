"""What a client may build: architecture names (the registry, timm:, hf:) with their
parameter counts at a given shape, and an architecture's layers with their output
shapes (the names feature methods take). Sizes are checked on the meta device before
anything is allocated."""

from __future__ import annotations

import fnmatch
from typing import Any

from app.errors import Invalid
from app.settings import Settings

MAX_SIZED = 200  # parameter counts per request: each builds a model on the meta device


def list_architectures(
    match: str | None, input_shape: tuple[int, ...] | None, classes: int, limit: int
) -> dict[str, Any]:
    from kdcore.models import architecture_names, parameter_count

    names = architecture_names()
    if match:
        names = fnmatch.filter(names, match)
    shown = names[: min(limit, MAX_SIZED) if input_shape else limit]
    data = [
        {
            "name": name,
            **({"parameters": parameter_count(name, classes, input_shape)} if input_shape else {}),
        }
        for name in shown
    ]
    return {"data": data, "total": len(names)}


def layers(
    settings: Settings,
    arch: str,
    config: dict[str, Any] | None,
    input_shape: tuple[int, ...],
    classes: int,
) -> list[dict[str, Any]]:
    """Every layer's name, type and output shape (batch dimension as "N")."""
    from kdcore.checks.cost import BYTES_PER_VALUE, model_cost
    from kdcore.checks.layers import model_layers
    from kdcore.models import is_known, unknown_arch
    from kdcore.models.ecosystems import check_hf_config
    from kdcore.spec import ModelSpec

    if not is_known(arch):
        raise Invalid([("/arch", unknown_arch(arch))], unknown_arch(arch))
    try:
        if config is not None:
            check_hf_config(config)
        params, values = model_cost(ModelSpec(arch=arch, config=config), classes, input_shape)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise Invalid([("/arch", f"cannot build {arch}: {exc}")], str(exc)) from None
    if (
        params > settings.max_model_params
        or values * 2 * BYTES_PER_VALUE > settings.max_activation_bytes
    ):
        message = f"{arch} at {list(input_shape)} is over this service's model limits"
        raise Invalid([("/input_shape", message)], message)
    try:  # on the meta device: an op with no meta kernel is a 422, not a forward pass
        shapes = model_layers(arch, classes, input_shape, config)
    except ValueError as exc:
        raise Invalid([("/arch", str(exc))], str(exc)) from None
    return [
        {"name": name, "type": kind, "shape": ["N", *shape[1:]]} for name, kind, shape in shapes
    ]
