"""CRD, Contrastive Representation Distillation (Tian et al., ICLR 2020), as
RepDistiller computes it: both penultimate features are embedded (linear + L2 norm),
each is contrasted against the *other* model's memory bank at its own index (the
positive) and at `crd_negatives` indices of other classes, with a non-parametric
softmax whose normaliser Z is estimated once on the first batch, and an NCE loss.
The banks then move towards this batch's embeddings with momentum."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdcore.losses.base import LOSSES, DistillLoss, full, kd_term
from kdcore.spec import DistillationSpec

NCE_EPS = 1e-7


def nce_loss(scores: Tensor, n_data: int) -> Tensor:
    """RepDistiller's ContrastLoss: column 0 holds the positive's score, the rest the
    negatives'; noise is uniform over the data (probability 1 / n_data each)."""
    batch, m = scores.shape[0], scores.shape[1] - 1
    noise = m / n_data
    pos = scores[:, 0]
    log_d1 = torch.log(pos / (pos + noise + NCE_EPS))
    neg = scores[:, 1:]
    log_d0 = torch.log(noise / (neg + noise + NCE_EPS))
    return -(log_d1.sum() + log_d0.sum()) / batch


def embed_dim(shape: tuple[int, ...]) -> int:
    """A feature's width once embedded: channels for (N, C, H, W) maps (they are
    average-pooled first), else everything after the batch dimension."""
    return shape[1] if len(shape) == 4 else math.prod(shape[1:])


def flat_feature(f: Tensor) -> Tensor:
    if f.ndim == 4:
        f = F.adaptive_avg_pool2d(f, 1)
    return full(f).flatten(1)


class NegativeSampler:
    """Draws, for each sample, indices of samples of *other* classes uniformly
    ("exact" mode in RepDistiller), vectorised: indices are sorted by class, and a
    draw over the N - n_c other samples skips class c's block."""

    def __init__(self, labels: Tensor):
        labels = labels.cpu()
        self.by_class = torch.argsort(labels, stable=True)
        classes = int(labels.max()) + 1
        self.counts = torch.bincount(labels, minlength=classes)
        self.starts = torch.cumsum(self.counts, 0) - self.counts
        self.n = len(labels)

    def draw(self, labels: Tensor, k: int, gen: torch.Generator) -> Tensor:
        labels = labels.cpu()
        others = self.n - self.counts[labels]  # (B,)
        if bool((others == 0).any()):
            raise ValueError("crd needs samples of at least two classes")
        r = (torch.rand(len(labels), k, generator=gen) * others[:, None]).long()
        r = torch.minimum(r, others[:, None] - 1)
        start = self.starts[labels][:, None]
        pos = torch.where(r < start, r, r + self.counts[labels][:, None])
        return self.by_class[pos]


@LOSSES.register("crd")
class CRDLoss(DistillLoss):
    needs_features = True
    needs_indices = True
    feature_kind = "embedding"

    def __init__(self, spec: DistillationSpec):
        super().__init__(spec)
        self.t, self.ce_w, self.kd_w = spec.temperature, spec.ce_weight, spec.kd_weight
        self.feat_w = spec.feature_weight
        self.dim, self.k = spec.crd_feature_dim, spec.crd_negatives
        self.nce_t, self.momentum = spec.crd_temperature, spec.crd_momentum
        self.embed_s: nn.Module = nn.Identity()
        self.embed_t: nn.Module = nn.Identity()
        self.sampler: NegativeSampler | None = None
        self._batch: tuple[Tensor, torch.Generator] | None = None  # (indices, generator)

    def setup(self, s_feat_shapes, t_feat_shapes) -> None:
        if len(s_feat_shapes) != 1 or len(t_feat_shapes) != 1:
            raise ValueError("crd contrasts one feature per model (one layer each)")
        self.embed_s = nn.Linear(embed_dim(tuple(s_feat_shapes[0])), self.dim)
        self.embed_t = nn.Linear(embed_dim(tuple(t_feat_shapes[0])), self.dim)

    def bind_train_labels(self, labels: Tensor) -> None:
        self.sampler = NegativeSampler(labels)
        n = len(labels)
        stdv = 1.0 / math.sqrt(self.dim / 3)
        # RepDistiller's initialisation; buffers, so checkpoints carry the banks
        device = next(self.embed_s.parameters()).device
        for name in ("memory_s", "memory_t"):
            bank = torch.rand(n, self.dim, device=device).mul_(2 * stdv).add_(-stdv)
            self.register_buffer(name, bank)
        self.register_buffer("z", torch.full((2,), -1.0, device=device))

    def set_batch(self, indices: Tensor, generator: torch.Generator) -> None:
        if self.sampler is None:
            raise RuntimeError("bind_train_labels must be called before set_batch")
        self._batch = (indices, generator)

    def _contrast(self, v: Tensor, memory: Tensor, contrast_idx: Tensor, which: int) -> Tensor:
        weights = memory[contrast_idx]  # (B, K + 1, D), no gradient into the bank
        scores = torch.exp(torch.bmm(weights, v[:, :, None]).squeeze(2) / self.nce_t)
        z = self.get_buffer("z")
        # Z is estimated once, on the first batch (while it is still -1), then kept;
        # torch.where makes a new tensor, so the in-place write below is safe for autograd
        z_now = torch.where(z[which] < 0, scores.mean().detach() * memory.shape[0], z[which])
        z[which] = z_now
        return scores / z_now

    def _update(self, memory: Tensor, idx: Tensor, v: Tensor) -> None:
        with torch.no_grad():
            moved = memory[idx] * self.momentum + v.detach() * (1 - self.momentum)
            memory.index_copy_(0, idx, F.normalize(moved, dim=1))

    def forward(self, s_out, t_out, targets, s_feats=(), t_feats=()) -> dict[str, Tensor]:
        if self._batch is None or self.sampler is None:
            raise RuntimeError("crd needs the batch's sample indices (set_batch)")
        idx, gen = self._batch
        negatives = self.sampler.draw(targets, self.k, gen).to(idx.device)
        contrast_idx = torch.cat([idx[:, None], negatives], dim=1)
        v_s = F.normalize(full(self.embed_s(flat_feature(s_feats[0]))), dim=1)
        v_t = F.normalize(full(self.embed_t(flat_feature(t_feats[0]))), dim=1)
        memory_s, memory_t = self.get_buffer("memory_s"), self.get_buffer("memory_t")
        # the student's embedding against the teacher's bank, and the other way round
        crd = nce_loss(self._contrast(v_s, memory_t, contrast_idx, 0), memory_s.shape[0])
        crd = crd + nce_loss(self._contrast(v_t, memory_s, contrast_idx, 1), memory_s.shape[0])
        self._update(memory_s, idx, v_s)
        self._update(memory_t, idx, v_t)
        ce = F.cross_entropy(full(s_out), targets)
        distill = self.feat_w * crd
        terms = {"ce": ce, "crd": crd}
        if self.kd_w > 0:
            terms["kd"] = kd_term(s_out, t_out, self.t)
            distill = distill + self.kd_w * terms["kd"]
        return {"loss": self.ce_w * ce + self.ramp * distill, **terms}
