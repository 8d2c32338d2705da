"""Augmentation on whole batches, from a seeded generator (so resume is exact): random
crop with padding and flip, or the imagenet preset (RandomResizedCrop + flip for
training; evaluation images are resized and center-cropped once, kdcore.image.data)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from kdcore.spec import AugmentSpec


def center_crop(x: Tensor, side: int) -> Tensor:
    h, w = x.shape[-2:]
    top, left = (h - side) // 2, (w - side) // 2
    return x[..., top : top + side, left : left + side]


def random_resized_crop(
    x: Tensor,
    side: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    gen: torch.Generator,
) -> Tensor:
    """torchvision's RandomResizedCrop for a whole batch at once: per sample an area
    share in `scale` and an aspect ratio log-uniform in `ratio`, a box placed uniformly,
    resampled bilinearly to side x side (torchvision.ops.roi_align). A box larger than
    the image is clamped to it rather than drawn again (torchvision's ten tries then a
    center crop): the same distribution up to those rare draws."""
    from torchvision.ops import roi_align

    n, _, h, w = x.shape
    area = torch.empty(n).uniform_(scale[0], scale[1], generator=gen) * h * w
    log_r = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=gen)
    r = torch.exp(log_r)
    bw = torch.sqrt(area * r).clamp(1, w)
    bh = torch.sqrt(area / r).clamp(1, h)
    x0 = torch.rand(n, generator=gen) * (w - bw)
    y0 = torch.rand(n, generator=gen) * (h - bh)
    boxes = torch.stack([torch.arange(n, dtype=torch.float32), x0, y0, x0 + bw, y0 + bh], 1)
    # sampling_ratio 0: ceil(box / side) points per output pixel, averaged (antialiased
    # when shrinking, exact when the box is the output's size)
    out = roi_align(x.float(), boxes.to(x.device), (side, side), 1.0, 0, aligned=True)
    return out.to(x.dtype)


def augment_batch(
    x: Tensor, spec: AugmentSpec, gen: torch.Generator, side: int | None = None
) -> Tensor:
    """Random crop with zero padding and horizontal flip, or the imagenet preset's
    RandomResizedCrop to `side` and flip, vectorised over the batch. Random numbers come
    from `gen` on the CPU so they are identical on every device (and a resumed run's
    batch s gets the same crops: they are a function of (seed, step))."""
    if spec.preset == "imagenet":
        assert side is not None, "the imagenet preset crops to dataset.image_size"
        x = random_resized_crop(x, side, spec.crop_scale, spec.crop_ratio, gen)
        flip = (torch.rand(len(x), generator=gen) < 0.5).to(x.device)
        return torch.where(flip[:, None, None, None], x.flip(3), x)
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
