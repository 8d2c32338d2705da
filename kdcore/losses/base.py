"""What every distillation loss shares: the registry, the base class (its hooks and
the warmup ramp), and the small functions several methods use."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdcore.registry import Registry
from kdcore.spec import DistillationSpec

LossBuilder = Callable[[DistillationSpec], "DistillLoss"]
LOSSES: Registry[LossBuilder] = Registry("distillation method")


def full(x: Tensor) -> Tensor:
    """Upcast half-precision (autocast) outputs; keep fp32/fp64 as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def standardize(logits: Tensor) -> Tensor:
    """Sun et al. (CVPR 2024): z-score each row, with the unbiased std and their 1e-7."""
    mean = logits.mean(dim=1, keepdim=True)
    return (logits - mean) / (1e-7 + logits.std(dim=1, keepdim=True))


def kd_term(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton KD: T^2 * KL(softmax(z_t/T) || softmax(z_s/T)), averaged over the batch.

    `F.kl_div(input, target)` expects the *student* log-probabilities as input and
    the teacher probabilities as target; `batchmean` divides the summed KL by the
    batch size (the mathematically correct mean; "mean" would also divide by the
    class count). T^2 keeps gradient magnitudes comparable across temperatures.
    """
    t = temperature
    log_p_student = F.log_softmax(full(student_logits) / t, dim=1)
    p_teacher = F.softmax(full(teacher_logits) / t, dim=1)
    return F.kl_div(log_p_student, p_teacher, reduction="batchmean") * (t * t)


class DistillLoss(nn.Module):
    """A loss is called as `loss(student_out, teacher_out, targets, s_feats, t_feats)`
    and returns a dict of named terms; "loss" is the total that is backpropagated.

    Hooks the trainer calls: `setup` (probed feature shapes, before the optimizer is
    built), `bind_train_labels` (once), `set_epoch` (each epoch, from 1) and
    `set_batch` (each step, for losses that need the samples' indices)."""

    needs_features = False
    needs_indices = False  # CRD: its memory bank is indexed by sample
    feature_kind = "maps"  # "maps": tapped layer outputs; "embedding": the classifier input

    def __init__(self, spec: DistillationSpec):
        super().__init__()
        self.warmup_epochs = spec.warmup_epochs
        self.ramp = 1.0  # min(epoch / warmup_epochs, 1): scales the distillation terms

    def setup(self, s_feat_shapes: list[torch.Size], t_feat_shapes: list[torch.Size]) -> None:
        """Called once with the probed feature shapes, before the optimizer is built."""

    def bind_train_labels(self, labels: Tensor) -> None:
        """Called once with the training split's labels (CRD draws negatives by class)."""

    def set_epoch(self, epoch: int) -> None:
        """`epoch` counts from 1, as in mdistiller: at epoch e the distillation terms are
        scaled by min(e / warmup_epochs, 1)."""
        self.ramp = min(epoch / self.warmup_epochs, 1.0) if self.warmup_epochs > 0 else 1.0

    def set_batch(self, indices: Tensor, generator: torch.Generator) -> None:
        """Called before each step with the batch's sample indices and a generator seeded
        by (seed, step), so that a resumed run draws the same random numbers."""


def build_loss(spec: DistillationSpec) -> DistillLoss:
    return LOSSES.get(spec.method)(spec)


def task_loss(task: str, out: Tensor, targets: Tensor) -> dict[str, Tensor]:
    """The plain supervised loss used by `train` jobs and the from-scratch baseline."""
    if task == "regression":
        mse = F.mse_loss(full(out).reshape(targets.shape), targets)
        return {"loss": mse, "mse": mse}
    ce = F.cross_entropy(full(out), targets)
    return {"loss": ce, "ce": ce}
