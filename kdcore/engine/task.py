"""What a task gives the training loop (kdcore.engine.loop): its batches, the loss of
one, an evaluation, and the modules whose state a checkpoint keeps. Images
(kdcore.image.trainer.ImageTask) and text (kdcore.text.trainer.TextTask) are two tasks; a
third (embeddings, detection) is a third class, not a third loop."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, Protocol

from torch import Tensor, nn


class Task(Protocol):
    unit: str  # what the rate counts: "images" or "tokens"
    student: nn.Module  # the weights the run trains, checkpoints and selects
    extra: nn.Module | None  # a loss module trained beside it (FitNets adapters, CRD banks)
    steps_per_epoch: int
    has_validation: bool  # the best epoch and early stopping need a validation split

    def begin_epoch(self, epoch: int) -> None:
        """Before epoch `epoch` (from 0) trains: e.g. a loss's warmup ramp."""

    def batches(self, epoch: int, start: int) -> Generator[tuple[int, Any], None, None]:
        """(i, batch) for steps `start`.. of epoch `epoch`, in an order that is a
        function of (seed, epoch); the loop closes it when a run stops early."""
        ...

    def loss(self, batch: Any, step: int) -> tuple[dict[str, Tensor], int]:
        """The loss terms of one batch ("loss" is the one minimised), and how much of
        the unit this rank took (images, tokens)."""
        ...

    def end_epoch(self) -> None:
        """After the epoch's last step: e.g. a teacher store writes what it gathered."""

    def evaluate(self) -> dict[str, float]:
        """The held-out split's metrics; the best epoch reads BestEpoch's metric here."""
        ...
