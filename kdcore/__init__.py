"""kdcore: knowledge distillation as a library. See kdcore.pipeline for the entry points."""

from kdcore.callbacks import Callbacks, Progress
from kdcore.errors import Cancelled, CheckpointError, DataError, KDError, SpecError
from kdcore.pipeline import distill, run, train
from kdcore.spec import JobSpec, parse_spec

__all__ = [
    "Callbacks",
    "Cancelled",
    "CheckpointError",
    "DataError",
    "JobSpec",
    "KDError",
    "Progress",
    "SpecError",
    "distill",
    "parse_spec",
    "run",
    "train",
]
