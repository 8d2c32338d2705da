"""Methods that compare intermediate feature maps: attention transfer and FitNets.
Both pair the tapped layers in order and add the CE term (and KD when kd_weight > 0)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdcore.losses.base import LOSSES, DistillLoss, full, kd_term
from kdcore.spec import DistillationSpec


def attention_map(feature: Tensor) -> Tensor:
    """Zagoruyko & Komodakis: channel-mean of squared activations, L2-normalised per sample."""
    return F.normalize(full(feature).pow(2).mean(1).flatten(1), dim=1)


def pool_to_smaller(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Average-pool the larger of two maps down to the smaller's height and width, as
    RepDistiller and mdistiller do (never upsample the smaller one)."""
    if a.shape[-2] > b.shape[-2]:
        a = F.adaptive_avg_pool2d(a, (b.shape[-2], b.shape[-1]))
    elif a.shape[-2] < b.shape[-2]:
        b = F.adaptive_avg_pool2d(b, (a.shape[-2], a.shape[-1]))
    return a, b


def _four_d(s: tuple[int, ...], t: tuple[int, ...], method: str) -> None:
    if len(s) != 4 or len(t) != 4:
        raise ValueError(f"{method} needs 4-D (N, C, H, W) feature maps on both models")


class _FeatureLoss(DistillLoss):
    needs_features = True

    def __init__(self, spec: DistillationSpec):
        super().__init__(spec)
        self.t, self.ce_w, self.kd_w = spec.temperature, spec.ce_weight, spec.kd_weight
        self.feat_w = spec.feature_weight

    def combine(self, s_out, t_out, targets, name: str, feature: Tensor) -> dict[str, Tensor]:
        ce = F.cross_entropy(full(s_out), targets)
        distill = self.feat_w * feature
        terms = {"ce": ce, name: feature}
        if self.kd_w > 0:
            terms["kd"] = kd_term(s_out, t_out, self.t)
            distill = distill + self.kd_w * terms["kd"]
        return {"loss": self.ce_w * ce + self.ramp * distill, **terms}


@LOSSES.register("at")
class AttentionTransferLoss(_FeatureLoss):
    """Attention transfer: the mean squared distance of normalised attention maps,
    summed over layer pairs, times feature_weight (1000, the paper's code)."""

    def setup(self, s_feat_shapes, t_feat_shapes) -> None:
        for s, t in zip(s_feat_shapes, t_feat_shapes, strict=True):
            _four_d(s, t, "at")

    def forward(self, s_out, t_out, targets, s_feats=(), t_feats=()) -> dict[str, Tensor]:
        at = full(s_out).new_zeros(())
        for fs, ft in zip(s_feats, t_feats, strict=True):
            fs, ft = pool_to_smaller(fs, ft)
            at = at + (attention_map(fs) - attention_map(ft)).pow(2).mean()
        return self.combine(s_out, t_out, targets, "at", at)


class ConvReg(nn.Module):
    """RepDistiller's FitNets regressor: conv + BN + ReLU onto the teacher's channels,
    the conv chosen so the output has the teacher's height and width: stride 2 when
    the student map is twice as large, a transposed conv when half as large, else a
    valid conv with kernel (1 + dH, 1 + dW)."""

    def __init__(self, s_shape: tuple[int, ...], t_shape: tuple[int, ...]):
        super().__init__()
        (_, s_c, s_h, s_w), (_, t_c, t_h, t_w) = s_shape, t_shape
        self.conv: nn.Module
        if s_h == 2 * t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
        elif s_h * 2 == t_h:
            self.conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
        elif s_h >= t_h and s_w >= t_w:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
        else:
            raise ValueError(
                f"fitnet's convreg cannot map a {s_h}x{s_w} student map onto a {t_h}x{t_w} "
                'teacher map; tap other layers or set distillation.regressor to "conv1x1"'
            )
        self.bn = nn.BatchNorm2d(t_c)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


@LOSSES.register("fitnet")
class FitNetLoss(_FeatureLoss):
    """FitNets hint: MSE(regressor(f_s), f_t) per layer pair, summed, times
    feature_weight (100, as mdistiller). The regressor trains with the student."""

    def __init__(self, spec: DistillationSpec):
        super().__init__(spec)
        self.regressor = spec.regressor
        self.adapters = nn.ModuleList()

    def setup(self, s_feat_shapes, t_feat_shapes) -> None:
        for s, t in zip(s_feat_shapes, t_feat_shapes, strict=True):
            _four_d(s, t, "fitnet")
            if self.regressor == "convreg":
                self.adapters.append(ConvReg(tuple(s), tuple(t)))
            else:
                self.adapters.append(nn.Conv2d(s[1], t[1], kernel_size=1, bias=False))

    def forward(self, s_out, t_out, targets, s_feats=(), t_feats=()) -> dict[str, Tensor]:
        hint = full(s_out).new_zeros(())
        for adapter, fs, ft in zip(self.adapters, s_feats, t_feats, strict=True):
            adapted, ft = pool_to_smaller(adapter(fs), ft)
            hint = hint + F.mse_loss(full(adapted), full(ft))
        return self.combine(s_out, t_out, targets, "hint", hint)
