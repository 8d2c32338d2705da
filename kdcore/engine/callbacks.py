"""What the training loop tells its caller, and how the caller asks it to stop."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Progress:
    phase: str  # "train" (the job itself) or "baseline" (the from-scratch student)
    epoch: int  # 1-based epoch currently running / just finished
    epochs: int
    step: int  # optimizer steps done, over the whole run
    total_steps: int
    lr: float
    losses: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # validation, at epoch end
    images_per_s: float = 0.0
    eta_s: float | None = None
    elapsed_s: float = 0.0
    trial: dict[str, Any] | None = None  # in a sweep: which trial (index, of, rung, params)
    tokens_per_s: float | None = None  # a text job's rate (its images_per_s stays 0)

    @property
    def model(self) -> str:
        """Whose figures these are: the student the job trains, or the baseline (the
        same student trained without a teacher, spec `baseline: true`)."""
        return "baseline" if self.phase == "baseline" else "student"

    @property
    def stage(self) -> str:
        """What the job is doing: `generating` (a teacher answers the prompts of a
        sequence-level distillation: step counts answers of total_steps) or `training`."""
        return "generating" if self.phase == "generate" else "training"

    def to_dict(self) -> dict[str, Any]:
        data = {**asdict(self), "model": self.model, "stage": self.stage}
        if self.tokens_per_s is not None:  # a text job has no image rate to report
            del data["images_per_s"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Progress:
        """The inverse of to_dict (the derived `model` and `stage` are dropped)."""
        return cls(**{k: v for k, v in data.items() if k not in ("model", "stage")})


class Callbacks:
    """Subclass and override what you need. All hooks run in the training process,
    between optimizer steps, so they should be quick."""

    def on_step(self, progress: Progress) -> None:  # every `log_every` steps
        pass

    def on_epoch_end(self, progress: Progress) -> None:
        pass

    def on_checkpoint(self, path: Path, progress: Progress) -> None:
        pass

    def on_trial_end(self, trial: dict[str, Any]) -> None:  # a sweep's trial is recorded
        pass

    def should_stop(self) -> bool:
        """Checked before every step; True stops the run cleanly (after a checkpoint)."""
        return False
