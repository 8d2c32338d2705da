"""Distillation losses (a registry). Each is an nn.Module so that losses with
parameters (the FitNets adapter) are trained together with the student.

A loss is called as `loss(student_out, teacher_out, targets, s_feats, t_feats)`
and returns a dict of named terms; "loss" is the total that is backpropagated.
Feature lists are only filled for methods with `needs_features = True`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdcore.registry import Registry
from kdcore.spec import DistillationSpec

LossBuilder = Callable[[DistillationSpec], "DistillLoss"]
LOSSES: Registry[LossBuilder] = Registry("distillation method")


def _full(x: Tensor) -> Tensor:
    """Upcast half-precision (autocast) outputs; keep fp32/fp64 as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def kd_term(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton KD: T^2 * KL(softmax(z_t/T) || softmax(z_s/T)), averaged over the batch.

    `F.kl_div(input, target)` expects the *student* log-probabilities as input and
    the teacher probabilities as target; `batchmean` divides the summed KL by the
    batch size (the mathematically correct mean; "mean" would also divide by the
    class count). T^2 keeps gradient magnitudes comparable across temperatures.
    """
    t = temperature
    log_p_student = F.log_softmax(_full(student_logits) / t, dim=1)
    p_teacher = F.softmax(_full(teacher_logits) / t, dim=1)
    return F.kl_div(log_p_student, p_teacher, reduction="batchmean") * (t * t)


def attention_map(feature: Tensor) -> Tensor:
    """Zagoruyko & Komodakis: channel-mean of squared activations, L2-normalised per sample."""
    return F.normalize(_full(feature).pow(2).mean(1).flatten(1), dim=1)


def _match_spatial(student: Tensor, teacher: Tensor) -> Tensor:
    if student.shape[-2:] != teacher.shape[-2:]:
        student = F.adaptive_avg_pool2d(student, (teacher.shape[-2], teacher.shape[-1]))
    return student


class DistillLoss(nn.Module):
    needs_features = False
    uses_teacher_logits = True

    def setup(self, s_feat_shapes: list[torch.Size], t_feat_shapes: list[torch.Size]) -> None:
        """Called once with the probed feature shapes, before the optimizer is built."""


@LOSSES.register("kd")
class KDLoss(DistillLoss):
    def __init__(self, spec: DistillationSpec):
        super().__init__()
        self.t, self.ce_w, self.kd_w = spec.temperature, spec.ce_weight, spec.kd_weight

    def forward(self, s_out, t_out, targets, s_feats=(), t_feats=()) -> dict[str, Tensor]:
        ce = F.cross_entropy(_full(s_out), targets)
        kd = kd_term(s_out, t_out, self.t)
        return {"loss": self.ce_w * ce + self.kd_w * kd, "ce": ce, "kd": kd}


@LOSSES.register("mse")
class RegressionKDLoss(DistillLoss):
    """Regression KD: MSE(pred, y) + kd_weight * MSE(pred, teacher_pred)."""

    def __init__(self, spec: DistillationSpec):
        super().__init__()
        self.w = spec.kd_weight

    def forward(self, s_out, t_out, targets, s_feats=(), t_feats=()) -> dict[str, Tensor]:
        pred = _full(s_out).reshape(targets.shape)
        mse_y = F.mse_loss(pred, targets)
        mse_t = F.mse_loss(pred, _full(t_out).reshape(targets.shape))
        return {"loss": mse_y + self.w * mse_t, "mse": mse_y, "mse_teacher": mse_t}


@LOSSES.register("fitnet")
class FitNetLoss(DistillLoss):
    """FitNets hint: MSE(adapter(f_s), f_t) with a learned 1x1 conv adapter per layer pair,
    plus the CE and (if kd_weight > 0) KD terms."""

    needs_features = True

    def __init__(self, spec: DistillationSpec):
        super().__init__()
        self.t, self.ce_w, self.kd_w = spec.temperature, spec.ce_weight, spec.kd_weight
        self.feat_w = spec.feature_weight
        self.adapters = nn.ModuleList()

    def setup(self, s_feat_shapes, t_feat_shapes) -> None:
        for s, t in zip(s_feat_shapes, t_feat_shapes, strict=True):
            if len(s) != 4 or len(t) != 4:
                raise ValueError("fitnet needs 4-D (N, C, H, W) feature maps on both models")
            self.adapters.append(nn.Conv2d(s[1], t[1], kernel_size=1, bias=False))

    def forward(self, s_out, t_out, targets, s_feats=(), t_feats=()) -> dict[str, Tensor]:
        ce = F.cross_entropy(_full(s_out), targets)
        hint = _full(s_out).new_zeros(())
        for adapter, fs, ft in zip(self.adapters, s_feats, t_feats, strict=True):
            hint = hint + F.mse_loss(_full(_match_spatial(adapter(fs), ft)), _full(ft))
        total = self.ce_w * ce + self.feat_w * hint
        terms = {"ce": ce, "hint": hint}
        if self.kd_w > 0:
            terms["kd"] = kd_term(s_out, t_out, self.t)
            total = total + self.kd_w * terms["kd"]
        return {"loss": total, **terms}


@LOSSES.register("at")
class AttentionTransferLoss(DistillLoss):
    """Attention transfer: mean squared distance of normalised attention maps, summed
    over layer pairs (feature_weight ~1000 as in the paper's code), plus CE (and KD)."""

    needs_features = True

    def __init__(self, spec: DistillationSpec):
        super().__init__()
        self.t, self.ce_w, self.kd_w = spec.temperature, spec.ce_weight, spec.kd_weight
        self.feat_w = spec.feature_weight

    def forward(self, s_out, t_out, targets, s_feats=(), t_feats=()) -> dict[str, Tensor]:
        ce = F.cross_entropy(_full(s_out), targets)
        at = _full(s_out).new_zeros(())
        for fs, ft in zip(s_feats, t_feats, strict=True):
            at = at + (attention_map(_match_spatial(fs, ft)) - attention_map(ft)).pow(2).mean()
        total = self.ce_w * ce + self.feat_w * at
        terms = {"ce": ce, "at": at}
        if self.kd_w > 0:
            terms["kd"] = kd_term(s_out, t_out, self.t)
            total = total + self.kd_w * terms["kd"]
        return {"loss": total, **terms}


@LOSSES.register("dkd")
class DKDLoss(DistillLoss):
    """Decoupled KD (Zhao et al., 2022): alpha * TCKD + beta * NCKD, plus ce_weight * CE.

    TCKD is the binary KL over (target, non-target) probability mass; NCKD is the KL
    over the non-target classes only (the target logit is masked out with -1000 before
    the softmax). Both use T^2 and are averaged over the batch.
    """

    def __init__(self, spec: DistillationSpec):
        super().__init__()
        self.t, self.ce_w = spec.temperature, spec.ce_weight
        self.alpha, self.beta = spec.alpha, spec.beta

    def forward(self, s_out, t_out, targets, s_feats=(), t_feats=()) -> dict[str, Tensor]:
        t = self.t
        zs, zt = _full(s_out) / t, _full(t_out) / t
        gt = F.one_hot(targets, zs.shape[1]).bool()
        ps, pt = F.softmax(zs, dim=1), F.softmax(zt, dim=1)
        bs = torch.stack([(ps * gt).sum(1), (ps * ~gt).sum(1)], dim=1)
        bt = torch.stack([(pt * gt).sum(1), (pt * ~gt).sum(1)], dim=1)
        tckd = F.kl_div(torch.log(bs.clamp_min(1e-12)), bt, reduction="batchmean") * t * t
        log_ps_nt = F.log_softmax(zs - 1000.0 * gt, dim=1)
        pt_nt = F.softmax(zt - 1000.0 * gt, dim=1)
        nckd = F.kl_div(log_ps_nt, pt_nt, reduction="batchmean") * t * t
        ce = F.cross_entropy(_full(s_out), targets)
        total = self.ce_w * ce + self.alpha * tckd + self.beta * nckd
        return {"loss": total, "ce": ce, "tckd": tckd, "nckd": nckd}


def task_loss(task: str, out: Tensor, targets: Tensor) -> dict[str, Tensor]:
    """The plain supervised loss used by `train` jobs and the from-scratch baseline."""
    if task == "regression":
        mse = F.mse_loss(_full(out).reshape(targets.shape), targets)
        return {"loss": mse, "mse": mse}
    ce = F.cross_entropy(_full(out), targets)
    return {"loss": ce, "ce": ce}


def build_loss(spec: DistillationSpec) -> DistillLoss:
    return LOSSES.get(spec.method)(spec)
