"""Job specs for tests: each trains in seconds on synthetic data (no download)."""

from __future__ import annotations

from typing import Any


def _merge(spec: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return spec


def tiny_spec(**overrides: Any) -> dict[str, Any]:
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
        # the teachers here are random or barely trained (the loop's mechanics, not its
        # quality): the preflight records their score instead of failing the job
        "distillation": {
            "method": "kd",
            "temperature": 4.0,
            "ce_weight": 0.5,
            "kd_weight": 0.5,
            "teacher_check": "warn",
        },
        "training": {"epochs": 2, "batch_size": 32, "lr": 0.05, "seed": 0, "precision": "fp32"},
    }
    return _merge(spec, overrides)


def tiny_job(**overrides: Any) -> dict[str, Any]:
    """A `train` job for the service: an MLP on 200 synthetic 6x6 images, 2 epochs.
    Top-level keys given replace the defaults whole, but for `distillation`: a distill
    job made from it also records its teacher's preflight rather than failing on it (its
    teachers are random or trained for seconds: mechanics, not quality)."""
    spec: dict[str, Any] = {
        "name": "tiny",
        "kind": "train",
        "student": {"arch": "mlp_small"},
        "dataset": {
            "builtin": "synthetic",
            "num_samples": 200,
            "num_classes": 3,
            "shape": [1, 6, 6],
        },
        "training": {"epochs": 2, "batch_size": 32, "precision": "fp32"},
    }
    spec.update(overrides)
    if spec["kind"] == "distill":
        spec["distillation"] = {"teacher_check": "warn", **spec.get("distillation", {})}
    return spec


def training_spec(name: str, epochs: int = 8) -> dict[str, Any]:
    """A job long enough to kill mid-epoch (fault tests): cifar_resnet8 on 16x16."""
    return {
        "name": name,
        "kind": "train",
        "student": {"arch": "cifar_resnet8"},
        "dataset": {
            "builtin": "synthetic",
            "num_samples": 800,
            "num_classes": 4,
            "shape": [1, 16, 16],
        },
        "training": {"epochs": epochs, "batch_size": 16, "precision": "fp32"},
    }
