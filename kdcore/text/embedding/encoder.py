"""A sentence encoder: a transformers encoder, its pooling (mean over the tokens the
attention mask keeps, or the first token), a projection to the teacher's width when the
student is narrower or wider, and unit length when the teacher's embeddings have it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdcore.errors import CheckpointError, SpecError
from kdcore.text.embedding.folder import Pooling
from kdcore.text.models import text_model_class


class SentenceEncoder(nn.Module):
    def __init__(self, backbone: nn.Module, pooling: Pooling, out_dim: int | None = None):
        super().__init__()
        self.backbone, self.pooling = backbone, pooling
        config: Any = backbone.config
        self.width = int(config.hidden_size)
        self.dimension = out_dim or self.width
        # what sentence-transformers calls a Dense module (identity activation)
        self.projection = (
            nn.Linear(self.width, out_dim) if out_dim not in (None, self.width) else None
        )

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask)[0]
        if self.pooling.mode == "cls":
            pooled = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        if self.projection is not None:
            pooled = self.projection(pooled)
        if self.pooling.normalize:
            pooled = nn.functional.normalize(pooled, p=2, dim=-1)
        return pooled


def build_encoder_backbone(
    arch: str, config: dict[str, Any], vocab_size: int, pointer: str
) -> nn.Module:
    """The class `arch` names (an encoder: hf:<Name>Model) from `config`, without the
    pooler head a BERT adds (the sentence embedding is pooled from the tokens)."""
    try:
        cls = text_model_class(arch, "embedding")
    except ValueError as exc:
        raise SpecError([(f"{pointer}/arch", str(exc))]) from None
    values = {k: v for k, v in config.items() if k != "architectures"}
    cfg = cls.config_class.from_dict(values)
    cfg.vocab_size = max(int(getattr(cfg, "vocab_size", 0) or 0), vocab_size)
    try:
        return cls(cfg, add_pooling_layer=False)  # BERT-like classes take it
    except TypeError:
        return cls(cfg)


@torch.inference_mode()
def encode_batches(model: nn.Module, batches: Any, device: torch.device) -> Tensor:
    """The embeddings of every (ids, mask) batch, in order, on the CPU."""
    model.eval()
    out = [model(ids.to(device), mask.to(device)).float().cpu() for ids, mask in batches]
    return torch.cat(out) if out else torch.zeros(0)


def load_encoder_weights(backbone: nn.Module, weights: Path, what: str) -> None:
    """safetensors only. A BERT folder's pooler head (unused: the embedding is pooled
    from the tokens) is dropped, and a task model's prefix (`bert.`) taken off; every
    key the encoder has must be there."""
    from safetensors.torch import load_file

    state = load_file(str(weights))
    prefix = getattr(backbone, "base_model_prefix", "") + "."
    if prefix != "." and state and all(k.startswith(prefix) for k in state):
        state = {k.removeprefix(prefix): v for k, v in state.items()}
    own = backbone.state_dict()
    # buffers older transformers saved (position_ids) and the unused pooler head
    state = {
        k: v
        for k, v in state.items()
        if k in own or not (k.startswith("pooler.") or k.endswith("position_ids"))
    }
    try:
        result = backbone.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a shape that does not fit
        raise CheckpointError(f"{what}: the weights do not fit the config: {exc}"[:500]) from None
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"{what}: the weights do not fit the config (missing {missing[:3]}, "
            f"unexpected {result.unexpected_keys[:3]})"
        )
