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

**Memory.** Written plainly, the loss holds several fp32 copies of batch x sequence x
vocabulary (the float cast, the masked rows, each softmax, the divergence's terms, and
what autograd saves of them): at a 128k vocabulary that is many times the logits
themselves. `token_kd_loss` instead walks the predicted positions in chunks of about
`CHUNK_ELEMENTS` logits: each chunk's loss and its gradient with respect to the
student's logits are computed at once (the way Liger's fused losses do), the gradient
is written into one buffer shaped like the student's logits, and backward only scales
it. Its peak is that buffer plus one chunk's temporaries, whatever the vocabulary and
sequence. `token_kd_loss_unchunked` is the plain form, kept as the reference the tests
compare against and the "before" of `bench/lm_kd.py --loss-memory`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

TOKEN_METHODS = ("forward_kl", "reverse_kl", "gkd")
SEQUENCE_METHOD = "sequence"
CROSS_TOKENIZER_METHOD = "uld"  # kdcore.text.cross_tokens: any two tokenizers
LM_METHODS = (*TOKEN_METHODS, CROSS_TOKENIZER_METHOD, SEQUENCE_METHOD)
# logits per chunk. On the CPU, small chunks: glibc keeps freed blocks of this size in
# its heap, so each temporary's size is paid in resident memory (4 MiB in fp32, 8
# positions at 128k; no slower than larger ones, bench/lm_kd.py). On a GPU, 16 MiB: the
# caching allocator reuses blocks, and fewer chunks mean fewer kernel launches.
CHUNK_ELEMENTS = {"cpu": 1 << 20, "accelerator": 1 << 22}

Teacher = Tensor | tuple[Tensor, Tensor]  # logits, or top-k (values, indices)


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


def _rows_kd(
    method: str, s_rows: Tensor, t_rows: Teacher, temperature: float, beta: float
) -> Tensor:
    """The summed divergence of some predicted positions (rows of fp32 student logits)."""
    s_t = s_rows / temperature
    if isinstance(t_rows, tuple):  # top-k: both renormalised over the teacher's k tokens
        values, indices = t_rows
        t_logp = F.log_softmax(values.float() / temperature, dim=-1)
        s_logp = F.log_softmax(s_t.gather(-1, indices.long()), dim=-1)
    else:
        t_logp = F.log_softmax(t_rows.float() / temperature, dim=-1)
        s_logp = F.log_softmax(s_t, dim=-1)
    return divergence(method, s_logp, t_logp, beta).sum()


def token_kd_loss_unchunked(
    method: str,
    student_logits: Tensor,
    teacher: Teacher,
    ids: Tensor,
    targets: Tensor,
    temperature: float,
    ce_weight: float,
    kd_weight: float,
    beta: float = 0.5,
) -> dict[str, Tensor]:
    """The plain form of `token_kd_loss` (every predicted position at once)."""
    s = student_logits[:, :-1].float()
    mask = targets[:, 1:]
    count = mask.sum().clamp_min(1)
    ce = F.cross_entropy(s[mask], ids[:, 1:][mask], reduction="sum") / count
    t_rows: Teacher = (
        (teacher[0][:, :-1][mask], teacher[1][:, :-1][mask])
        if isinstance(teacher, tuple)
        else teacher[:, :-1][mask]
    )
    kd = _rows_kd(method, s[mask], t_rows, temperature, beta) / count * temperature**2
    return {"loss": ce_weight * ce + kd_weight * kd, "ce": ce.detach(), "kd": kd.detach()}


class _ChunkedTokenKD(torch.autograd.Function):
    """Forward computes the loss and d(loss)/d(student logits) chunk by chunk; backward
    scales that gradient (the chain rule's one factor: the loss is a scalar)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        student_logits: Tensor,
        teacher: Teacher,
        ids: Tensor,
        targets: Tensor,
        settings: tuple[str, float, float, float, float, bool],
    ) -> tuple[Tensor, Tensor, Tensor]:
        method, temperature, ce_weight, kd_weight, beta, _ = settings
        batch, length, vocab = student_logits.shape
        # position (b, t) predicts ids[b, t + 1]; rows are indices into (batch * length)
        predicted = torch.zeros_like(targets, dtype=torch.bool)
        predicted[:, :-1] = targets[:, 1:]
        rows = predicted.reshape(-1).nonzero().squeeze(1)
        next_ids = ids.roll(-1, dims=1).reshape(-1)
        count = max(len(rows), 1)
        student = student_logits.detach().reshape(-1, vocab)  # views, no copies
        if isinstance(teacher, tuple):
            t_flat: Teacher = tuple(x.reshape(-1, x.shape[-1]) for x in teacher)  # type: ignore[assignment]
        else:
            t_flat = teacher.reshape(-1, teacher.shape[-1])
        wants_grad = settings[5]
        grad = torch.zeros_like(student) if wants_grad else None
        ce_sum = student.new_zeros((), dtype=torch.float32)
        kd_sum = student.new_zeros((), dtype=torch.float32)
        per_chunk = CHUNK_ELEMENTS["cpu" if student.device.type == "cpu" else "accelerator"]
        step = max(1, per_chunk // vocab)
        for start in range(0, len(rows), step):
            r = rows[start : start + step]
            t_rows: Teacher = (
                (t_flat[0][r], t_flat[1][r]) if isinstance(t_flat, tuple) else t_flat[r]
            )
            with torch.enable_grad():
                s = student[r].float().requires_grad_(wants_grad)
                ce = F.cross_entropy(s, next_ids[r], reduction="sum")
                kd = _rows_kd(method, s, t_rows, temperature, beta)
                if grad is not None:
                    total = (ce_weight * ce + kd_weight * kd * temperature**2) / count
                    (chunk_grad,) = torch.autograd.grad(total, s)
                    grad[r] = chunk_grad.to(grad.dtype)
            ce_sum += ce.detach()
            kd_sum += kd.detach()
        ce_mean = ce_sum / count
        kd_mean = kd_sum / count * temperature**2
        # kept on ctx, not saved for backward: backward hands this very buffer on as
        # the logits' gradient (autograd can then take it without another copy)
        ctx.grad, ctx.shape = grad, student_logits.shape
        ctx.mark_non_differentiable(ce_mean, kd_mean)
        return ce_weight * ce_mean + kd_weight * kd_mean, ce_mean, kd_mean

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor, *_: Tensor) -> tuple[Tensor | None, ...]:
        grad, ctx.grad = ctx.grad, None
        grad.mul_(grad_loss.to(grad.dtype))  # no test of grad_loss == 1: a GPU sync a step
        return (grad.view(ctx.shape), None, None, None, None)


def token_kd_loss(
    method: str,
    student_logits: Tensor,
    teacher: Teacher,
    ids: Tensor,
    targets: Tensor,
    temperature: float,
    ce_weight: float,
    kd_weight: float,
    beta: float = 0.5,
) -> dict[str, Tensor]:
    """The loss of a batch: position t's logits predict token t+1 where targets[t+1].
    `teacher` is the teacher's logits, or its top-k (values, indices). Computed in
    chunks of positions (the module's docstring says why); equal to
    `token_kd_loss_unchunked`, gradient included."""
    if method not in TOKEN_METHODS:
        raise ValueError(f"unknown token-level method {method!r}")
    wants_grad = student_logits.requires_grad and torch.is_grad_enabled()
    loss, ce, kd = _ChunkedTokenKD.apply(
        student_logits.contiguous(),
        teacher,
        ids,
        targets,
        # under no_grad or inference_mode no gradient is built, only the values
        (method, temperature, ce_weight, kd_weight, beta, wants_grad),
    )
    return {"loss": loss, "ce": ce, "kd": kd}


def lm_loss(logits: Tensor, ids: Tensor, targets: Tensor) -> dict[str, Tensor]:
    """Plain next-token cross-entropy over the predicted tokens (a teacher's own
    training, the from-scratch baseline, and sequence-level KD on the teacher's text)."""
    mask = targets[:, 1:]
    ce = F.cross_entropy(logits[:, :-1].float()[mask], ids[:, 1:][mask])
    return {"loss": ce, "ce": ce.detach()}
