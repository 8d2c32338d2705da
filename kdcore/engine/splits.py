"""What a job trains and is measured on: the training, validation and test splits,
and how a set is cut into them. The splits' inputs are float tensors (kdcore.image.data's
in-memory path) or StreamedImages (kdcore.image.streaming)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from kdcore.spec import DatasetSpec


@dataclass
class Split:
    x: Tensor  # or a kdcore.image.streaming.StreamedImages, which answers the calls made of it
    y: Tensor

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def to(self, device: torch.device | str) -> Split:
        return Split(self.x.to(device), self.y.to(device))


@dataclass
class DataSplits:
    train: Split
    val: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, ...]
    regression: bool
    mean: list[float]
    std: list[float]
    class_names: list[str] | None = None
    streamed: bool = False  # the splits' x are kdcore.image.streaming.StreamedImages


def split_rows(n: int, spec: DatasetSpec, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """(train, val, test) rows of a set of `n` without its own test split: a random
    order drawn by the seed, cut by the fractions (max_samples first)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    if spec.max_samples:
        perm = perm[: spec.max_samples]
    n_test = max(1, round(len(perm) * spec.test_fraction))
    test_idx, rest = perm[:n_test], perm[n_test:]
    n_val = round(len(rest) * spec.val_fraction)
    return rest[n_val:], rest[:n_val], test_idx


def permute_rows_(x: Tensor, order: Tensor) -> Tensor:
    """x[order], made in x's own memory (no second copy of the set): the rows are moved
    along the permutation's cycles, one row held aside per cycle. Rows left out of
    `order` (dataset.max_samples) go to the end; the result is a view of the first
    len(order) rows."""
    n = x.shape[0]
    rest = torch.ones(n, dtype=torch.bool)
    rest[order] = False
    full = torch.cat([order, rest.nonzero().flatten()]).tolist()
    placed = [False] * n
    for start in range(n):
        if placed[start] or full[start] == start:
            continue
        held, j = x[start].clone(), start
        while True:  # x[j] takes the row that belongs there, until the cycle closes
            placed[j] = True
            k = full[j]
            if k == start:
                x[j] = held
                break
            x[j] = x[k]
            j = k
    return x[: len(order)]
