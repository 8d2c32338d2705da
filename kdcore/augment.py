"""Augmentation on whole batches, from a seeded generator (so resume is exact)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdcore.spec import AugmentSpec


def augment_batch(x: Tensor, spec: AugmentSpec, gen: torch.Generator) -> Tensor:
    """Random crop with zero padding and horizontal flip, vectorised over the batch.
    Random numbers come from `gen` on the CPU so they are identical on every device."""
    n, _, h, w = x.shape
    if spec.crop_padding:
        p = spec.crop_padding
        padded = F.pad(x, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (n,), generator=gen).to(x.device)
        dx = torch.randint(0, 2 * p + 1, (n,), generator=gen).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[batch, chans, rows, cols]
    if spec.hflip:
        flip = (torch.rand(n, generator=gen) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x
