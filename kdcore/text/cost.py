"""Sizing a text job before it runs (kdcore.checks.cost's twin): each model built from its
config on the meta device (no memory) for its parameter count, and one batch's
activations estimated from the config's width, depth and vocabulary."""

from __future__ import annotations

from typing import Any

from kdcore.spec import JobSpec
from kdcore.text.models import text_model_class

BYTES_PER_VALUE = 4
DEFAULT_VOCAB = 50_257  # a model folder's tokenizer is not read at submission


def _dims(config: dict[str, Any]) -> tuple[int, int, int]:
    """(width, layers, vocabulary) under the names transformers' configs use."""
    width = next(
        (config[k] for k in ("hidden_size", "n_embd", "d_model", "dim") if k in config), 768
    )
    layers = next(
        (
            config[k]
            for k in ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
            if k in config
        ),
        12,
    )
    return int(width), int(layers), int(config.get("vocab_size", DEFAULT_VOCAB))


def text_limits(spec: JobSpec, max_params: int, max_activation_bytes: int) -> list[tuple[str, str]]:
    import torch

    problems = []
    batch, seq = spec.training.batch_size, spec.dataset.seq_len
    for pointer, model in spec.model_roles():
        if model.arch is None or model.config is None:
            continue  # a model folder: sized from its file by the service
        width, layers, vocab = _dims(model.config)
        cls = text_model_class(model.arch, spec.task)
        values = {k: v for k, v in model.config.items() if k != "architectures"}
        try:
            with torch.device("meta"):
                params = sum(
                    p.numel() for p in cls(cls.config_class.from_dict(values)).parameters()
                )
        except Exception as exc:  # noqa: BLE001 (a config the class refuses)
            problems.append((f"{pointer}/config", f"{model.arch} cannot be built: {exc}"[:300]))
            continue
        if params > max_params:
            problems.append(
                (f"{pointer}/config", f"{params:,} parameters, over the limit of {max_params:,}")
            )
        # per token: ~16 activations per layer and width (attention, MLP, norms), and
        # the logits over the vocabulary (twice: the softmax's copy)
        act = batch * seq * (16 * width * layers + 2 * vocab) * BYTES_PER_VALUE
        if act > max_activation_bytes:
            problems.append(
                (
                    "/training/batch_size",
                    f"one batch of {batch} x {seq} tokens needs about {act / 1024**3:.2f} GiB of "
                    f"activations in {pointer[1:]}, over the limit of "
                    f"{max_activation_bytes / 1024**3:.2f} GiB",
                )
            )
    return problems
