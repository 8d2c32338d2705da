"""Distillation losses (a registry). Each is an nn.Module so that losses with
parameters (FitNets regressors, CRD embeddings and memory banks) train and checkpoint
with the student.

`build_loss(DistillationSpec)` builds one; it is called as
`loss(student_out, teacher_out, targets, s_feats, t_feats)` and returns a dict of
named terms, "loss" being the total that is backpropagated. Feature lists are only
filled for methods with `needs_features = True`.

  base.py          registry, base class and its hooks (warmup: set_epoch), kd_term
  logits.py        kd, dkd, dist (with logit standardization), mse
  feature_maps.py  at, fitnet (ConvReg)
  contrastive.py   crd
"""

from kdcore.losses import contrastive, feature_maps, logits  # noqa: F401  (registers)
from kdcore.losses.base import (
    LOSSES,
    DistillLoss,
    build_loss,
    full,
    kd_term,
    standardize,
    task_loss,
)
from kdcore.losses.feature_maps import attention_map, pool_to_smaller

__all__ = [
    "LOSSES",
    "DistillLoss",
    "attention_map",
    "build_loss",
    "full",
    "kd_term",
    "pool_to_smaller",
    "standardize",
    "task_loss",
]
