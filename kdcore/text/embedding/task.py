"""An embedding job as a task of the one training loop (kdcore.engine.loop): batches
of passages in an order that is a function of (seed, epoch), the student's embeddings
against the teacher's stored ones (MSE, the sentence-transformers recipe, or 1 -
cosine), and the validation passages' MSE and cosine as the metric that picks the best
epoch. The loop keeps every RNG, the checkpoint, the best epoch and early stopping."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from kdcore.engine.loop import data_parallel, ranks
from kdcore.engine.precision import autocast_for
from kdcore.spec import JobSpec
from kdcore.text.embedding.encoder import encode_batches
from kdcore.text.embedding.passages import Batcher, Passages
from kdcore.text.embedding.store import EmbeddingStore

EMBEDDING_METHODS = ("mse", "cosine")


def embedding_loss(method: str, student: Tensor, teacher: Tensor) -> Tensor:
    if method == "cosine":
        return (1 - nn.functional.cosine_similarity(student, teacher, dim=-1)).mean()
    return nn.functional.mse_loss(student, teacher)


def agreement(student: Tensor, teacher: Tensor) -> dict[str, float]:
    """MSE and mean cosine between two [passages, width] embedding matrices."""
    return {
        "mse": float(nn.functional.mse_loss(student, teacher)),
        "cosine": float(nn.functional.cosine_similarity(student, teacher, dim=-1).mean()),
    }


class EmbeddingTask:
    unit = "tokens"
    extra: nn.Module | None = None

    def __init__(
        self,
        spec: JobSpec,
        train: Passages,
        val: Passages,
        student: nn.Module,
        store: EmbeddingStore,
        batcher: Batcher,
        device: torch.device,
    ):
        self.spec, self.train, self.val, self.student = spec, train, val, student
        self.store, self.batcher, self.device = store, batcher, device
        self.method = spec.distillation.method
        student.to(device).train()
        self.world, self.rank = ranks()
        self.batch_size = max(1, min(spec.training.batch_size, len(train) // self.world))
        self.forward = data_parallel(student, device)
        self.steps_per_epoch = max(1, len(train) // (self.batch_size * self.world))
        self.has_validation = len(val) > 0

    def begin_epoch(self, epoch: int) -> None:
        pass

    def batches(self, epoch: int, start: int) -> Generator[tuple[int, Any], None, None]:
        order = torch.randperm(
            len(self.train),
            generator=torch.Generator().manual_seed(self.spec.training.seed * 1_000_003 + epoch),
        )
        for i in range(start, self.steps_per_epoch):
            first = (i * self.world + self.rank) * self.batch_size  # this rank's slice
            yield i, order[first : first + self.batch_size].numpy()

    def loss(self, batch: np.ndarray, step: int) -> tuple[dict[str, Tensor], int]:
        ids, mask = self.batcher(self.train.texts(batch))
        target = self.store.rows(self.train.ids[batch]).to(self.device)
        with autocast_for(self.device, self.spec.training.precision):
            embedded = self.forward(ids.to(self.device), mask.to(self.device))
        loss = embedding_loss(self.method, embedded.float(), target)
        return {"loss": loss}, int(mask.sum())

    def end_epoch(self) -> None:
        pass

    def embed(self, split: Passages) -> Tensor:
        batches = self.batcher.batches(split, self.spec.training.batch_size)
        out = encode_batches(self.student, batches, self.device)
        self.student.train()
        return out

    def evaluate(self) -> dict[str, float]:
        """MSE and cosine to the teacher on the validation passages (else the first
        training ones: a set too small to split)."""
        split = self.val if len(self.val) else self.train.head(256)
        return {
            k: round(v, 6) for k, v in agreement(self.embed(split), self.teacher_of(split)).items()
        }

    def teacher_of(self, split: Passages) -> Tensor:
        return self.store.rows(split.ids).float()
