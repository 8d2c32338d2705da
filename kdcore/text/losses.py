"""Token-level distillation losses for causal LMs, over the predicted tokens only.

With p = softmax(teacher / T) and q = softmax(student / T) at each predicted position:

- `forward_kl`: KL(p || q) = sum p (log p - log q): the student covers every token the
  teacher gives mass to (Hinton et al. 2015; DistillKit's default).
- `reverse_kl`: KL(q || p) = sum q (log q - log p): mode seeking (MiniLLM, Gu et al. 2024).
- `gkd`: the generalised Jensen-Shannon divergence of GKD (Agarwal et al., ICLR 2024),
  JSD(beta) = beta KL(p || m) + (1 - beta) KL(q || m), m = beta p + (1 - beta) q,
  computed in log space as TRL's GKD trainer does.

Each is averaged over the predicted tokens and multiplied by T^2 (so its gradients keep
their size as T changes, Hinton et al.). The job's loss is
`ce_weight * CE(student, next tokens) + kd_weight * divergence`.

**Top-k** (`distillation.teacher_topk: k`): the teacher's distribution is kept as its k
most likely tokens' values and indices (DistillKit's way of caching logits at scale:
k values instead of a vocabulary's); both p and q are then renormalised over those k
tokens before the divergence.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

TOKEN_METHODS = ("forward_kl", "reverse_kl", "gkd")
SEQUENCE_METHOD = "sequence"


def _kl(log_a: Tensor, log_b: Tensor) -> Tensor:
    """KL(a || b) per position, from log-probabilities (last dim the vocabulary)."""
    return (log_a.exp() * (log_a - log_b)).sum(-1)


def divergence(method: str, s_logp: Tensor, t_logp: Tensor, beta: float) -> Tensor:
    """Per-position divergence between the teacher's (t) and student's (s) log-probs."""
    if method == "forward_kl":
        return _kl(t_logp, s_logp)
    if method == "reverse_kl":
        return _kl(s_logp, t_logp)
    if method == "gkd":
        # log m = log(beta p + (1 - beta) q), elementwise (no stacked copy to reduce)
        mixture = torch.logaddexp(t_logp + math.log(beta), s_logp + math.log(1 - beta))
        return beta * _kl(t_logp, mixture) + (1 - beta) * _kl(s_logp, mixture)
    raise ValueError(f"unknown token-level method {method!r}")


def teacher_topk(logits: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k largest logits and their token ids (fp16 values: what a cache stores)."""
    values, indices = logits.float().topk(k, dim=-1)
    return values.half(), indices.int()


def token_kd_loss(
    method: str,
    student_logits: Tensor,
    teacher: Tensor | tuple[Tensor, Tensor],
    ids: Tensor,
    targets: Tensor,
    temperature: float,
    ce_weight: float,
    kd_weight: float,
    beta: float = 0.5,
) -> dict[str, Tensor]:
    """The loss of a batch: position t's logits predict token t+1 where targets[t+1].
    `teacher` is the teacher's logits, or its top-k (values, indices)."""
    s = student_logits[:, :-1].float()
    mask = targets[:, 1:]
    count = mask.sum().clamp_min(1)
    ce = F.cross_entropy(s[mask], ids[:, 1:][mask], reduction="sum") / count
    s_t = s[mask] / temperature
    if isinstance(teacher, tuple):  # top-k: both renormalised over the teacher's k tokens
        values, indices = teacher[0][:, :-1][mask], teacher[1][:, :-1][mask]
        t_logp = F.log_softmax(values.float() / temperature, dim=-1)
        s_logp = F.log_softmax(s_t.gather(-1, indices.long()), dim=-1)
    else:
        t_logp = F.log_softmax(teacher[:, :-1][mask].float() / temperature, dim=-1)
        s_logp = F.log_softmax(s_t, dim=-1)
    kd = divergence(method, s_logp, t_logp, beta).sum() / count * temperature**2
    return {"loss": ce_weight * ce + kd_weight * kd, "ce": ce.detach(), "kd": kd.detach()}


def lm_loss(logits: Tensor, ids: Tensor, targets: Tensor) -> dict[str, Tensor]:
    """Plain next-token cross-entropy over the predicted tokens (a teacher's own
    training, the from-scratch baseline, and sequence-level KD on the teacher's text)."""
    mask = targets[:, 1:]
    ce = F.cross_entropy(logits[:, :-1].float()[mask], ids[:, 1:][mask])
    return {"loss": ce, "ce": ce.detach()}
