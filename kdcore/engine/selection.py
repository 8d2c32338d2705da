"""Which epoch's weights a job keeps, and when it stops: the best validation epoch
(`training.select: best`) and early stopping (`training.early_stopping`).

The metric is the validation split's accuracy (higher is better), MSE for regression or
perplexity for a language model (lower is better), for every task alike (the one loop,
kdcore.engine.loop). An epoch improves when it beats the best so far by more than
`min_delta` (0 without early stopping: any improvement); its weights are copied then,
so the best state is there at the end without re-reading a checkpoint, and it travels
in every checkpoint so a resumed run remembers it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from kdcore.spec import JobSpec

# a task's quality on held-out data, where it is not accuracy
QUALITY_METRIC = {"regression": "mse", "causal_lm": "perplexity", "embedding": "mse"}
LOWER_IS_BETTER = frozenset({"mse", "perplexity"})


@dataclass
class BestEpoch:
    metric: str  # "accuracy", "mse" or "perplexity"
    min_delta: float = 0.0
    patience: int | None = None
    epoch: int | None = None  # the best epoch so far (from 1)
    value: float | None = None
    state: dict[str, Tensor] | None = None
    since: int = 0  # epochs since the last improvement
    stopped_at: int | None = None  # the epoch after which early stopping ended the run

    @classmethod
    def for_spec(cls, spec: JobSpec) -> BestEpoch:
        stopping = spec.training.early_stopping
        return cls(
            QUALITY_METRIC.get(spec.task, "accuracy"),
            stopping.min_delta if stopping else 0.0,
            stopping.patience if stopping else None,
        )

    def _better(self, value: float) -> bool:
        if self.value is None:
            return True
        if self.metric in LOWER_IS_BETTER:
            return value < self.value - self.min_delta
        return value > self.value + self.min_delta

    def update(
        self, epoch: int, metrics: dict[str, float], state: Callable[[], dict[str, Tensor]]
    ) -> None:
        """Note epoch `epoch`'s metrics; `state` gives a copy of its weights, asked for
        only when the epoch is the best so far."""
        value = metrics[self.metric]
        if self._better(value):
            self.epoch, self.value, self.since = epoch, value, 0
            self.state = state()
        else:
            self.since += 1
        if self.patience is not None and self.since >= self.patience:
            self.stopped_at = epoch

    def to_checkpoint(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _SAVED}

    def restore(self, saved: dict[str, Any] | None) -> None:
        if saved:
            for name in _SAVED:
                setattr(self, name, saved[name])


# what a checkpoint carries (the metric and thresholds come from the spec)
_SAVED = ("epoch", "value", "state", "since", "stopped_at")
