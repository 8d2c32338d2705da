"""Methods that compare outputs only: KD, DKD, DIST (classification) and MSE
(regression). With `logit_standardization` the softened softmaxes of kd, dkd and dist
see z-scored logits (Sun et al.); the CE term always sees the student's raw logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdcore.losses.base import LOSSES, DistillLoss, full, kd_term, standardize
from kdcore.spec import DistillationSpec


class _LogitLoss(DistillLoss):
    def __init__(self, spec: DistillationSpec):
        super().__init__(spec)
        self.t, self.ce_w, self.kd_w = spec.temperature, spec.ce_weight, spec.kd_weight
        self.standardize = spec.logit_standardization

    def soft_inputs(self, s_out: Tensor, t_out: Tensor) -> tuple[Tensor, Tensor]:
        zs, zt = full(s_out), full(t_out)
        if self.standardize:
            zs, zt = standardize(zs), standardize(zt)
        return zs, zt


@LOSSES.register("kd")
class KDLoss(_LogitLoss):
    """Hinton et al.: ce_weight * CE + kd_weight * T^2 KL(p_t || p_s)."""

    def forward(self, s_out, t_out, targets, s_feats=(), t_feats=()) -> dict[str, Tensor]:
        ce = F.cross_entropy(full(s_out), targets)
        kd = kd_term(*self.soft_inputs(s_out, t_out), self.t)
        return {"loss": self.ce_w * ce + self.ramp * self.kd_w * kd, "ce": ce, "kd": kd}


def _log_masses(z: Tensor, targets: Tensor, gt: Tensor) -> Tensor:
    """(log p_target, log p_non-target) per row, by log-sum-exp: exact even when one
    mass underflows (a clamp at 1e-12 bends values and gradients past a gap of ~27.6 T)."""
    log_all = torch.logsumexp(z, dim=1)
    log_target = z.gather(1, targets[:, None]).squeeze(1) - log_all
    log_rest = torch.logsumexp(z.masked_fill(gt, float("-inf")), dim=1) - log_all
    return torch.stack([log_target, log_rest], dim=1)


@LOSSES.register("dkd")
class DKDLoss(_LogitLoss):
    """Decoupled KD (Zhao et al., 2022): ce_weight * CE + ramp * (alpha * TCKD + beta * NCKD).

    TCKD is the binary KL over (target, non-target) probability mass; NCKD is the KL
    over the non-target classes only (the target logit is masked out with -1000 before
    the softmax, as in mdistiller). Both use T^2 and are averaged over the batch; the
    ramp is mdistiller's warmup, min(epoch / warmup_epochs, 1).
    """

    def __init__(self, spec: DistillationSpec):
        super().__init__(spec)
        self.alpha, self.beta = spec.alpha, spec.beta

    def forward(self, s_out, t_out, targets, s_feats=(), t_feats=()) -> dict[str, Tensor]:
        t = self.t
        zs, zt = self.soft_inputs(s_out, t_out)
        zs, zt = zs / t, zt / t
        gt = F.one_hot(targets, zs.shape[1]).bool()
        log_bs, log_bt = _log_masses(zs, targets, gt), _log_masses(zt, targets, gt)
        tckd = F.kl_div(log_bs, log_bt.exp(), reduction="batchmean") * t * t
        log_ps_nt = F.log_softmax(zs - 1000.0 * gt, dim=1)
        pt_nt = F.softmax(zt - 1000.0 * gt, dim=1)
        nckd = F.kl_div(log_ps_nt, pt_nt, reduction="batchmean") * t * t
        ce = F.cross_entropy(full(s_out), targets)
        total = self.ce_w * ce + self.ramp * (self.alpha * tckd + self.beta * nckd)
        return {"loss": total, "ce": ce, "tckd": tckd, "nckd": nckd}


def _pearson_distance(a: Tensor, b: Tensor) -> Tensor:
    """1 - the mean over rows of the Pearson correlation of a's and b's rows (DIST's
    code: cosine of the centred rows, eps 1e-8 in the denominator)."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-8)
    return 1 - cos.mean()


@LOSSES.register("dist")
class DISTLoss(_LogitLoss):
    """DIST (Huang et al., NeurIPS 2022): match relations, not values. Inter-class: the
    Pearson correlation of each sample's class probabilities; intra-class: of each
    class's probabilities across the batch. Both on softmax(z / T), times T^2."""

    def __init__(self, spec: DistillationSpec):
        super().__init__(spec)
        self.inter_w, self.intra_w = spec.inter_weight, spec.intra_weight

    def forward(self, s_out, t_out, targets, s_feats=(), t_feats=()) -> dict[str, Tensor]:
        zs, zt = self.soft_inputs(s_out, t_out)
        ys, yt = F.softmax(zs / self.t, dim=1), F.softmax(zt / self.t, dim=1)
        inter = _pearson_distance(ys, yt) * self.t**2
        intra = _pearson_distance(ys.T, yt.T) * self.t**2
        ce = F.cross_entropy(full(s_out), targets)
        dist = self.inter_w * inter + self.intra_w * intra
        total = self.ce_w * ce + self.ramp * self.kd_w * dist
        return {"loss": total, "ce": ce, "inter": inter, "intra": intra}


@LOSSES.register("mse")
class RegressionKDLoss(DistillLoss):
    """Regression KD: MSE(pred, y) + kd_weight * MSE(pred, teacher_pred)."""

    def __init__(self, spec: DistillationSpec):
        super().__init__(spec)
        self.w = spec.kd_weight

    def forward(self, s_out, t_out, targets, s_feats=(), t_feats=()) -> dict[str, Tensor]:
        pred = full(s_out).reshape(targets.shape)
        mse_y = F.mse_loss(pred, targets)
        mse_t = F.mse_loss(pred, full(t_out).reshape(targets.shape))
        return {"loss": mse_y + self.ramp * self.w * mse_t, "mse": mse_y, "mse_teacher": mse_t}
