import os

import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # the exact-resume and golden tests compare bits; keep the thread count fixed
    torch.set_num_threads(2)
    yield


def tiny_spec(**overrides):
    """A distill spec on small synthetic data that trains in well under a second."""
    spec = {
        "name": "tiny",
        "kind": "distill",
        "teacher": {"arch": "small_cnn"},
        "student": {"arch": "mlp_small"},
        "dataset": {
            "builtin": "synthetic",
            "num_samples": 256,
            "num_classes": 4,
            "shape": [1, 8, 8],
            "noise": 0.3,
        },
        "distillation": {"method": "kd", "temperature": 4.0, "ce_weight": 0.5, "kd_weight": 0.5},
        "training": {"epochs": 2, "batch_size": 32, "lr": 0.05, "seed": 0, "precision": "fp32"},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return spec


class PickleExploit:
    """Pickles into a payload that would run `touch MARKER` when unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))
