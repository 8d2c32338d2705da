"""Where a run trains: the device the spec asks for, checked against what is there."""

from __future__ import annotations

import torch

from kdcore.errors import SpecError


def pick_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise SpecError([("/training/device", "CUDA was requested but is not available")])
        # with several ranks kdcore.runs.distributed has set each process's own device
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
