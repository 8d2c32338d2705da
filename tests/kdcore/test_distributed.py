"""Data-parallel runs (`resources.gpus: N`) on the CPU with the gloo backend and two
processes: the same code path as N GPUs with NCCL."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import kdcore
from kdcore.engine.callbacks import Callbacks, Progress
from tests.support.specs import tiny_spec

pytestmark = pytest.mark.integration  # spawned ranks


class Recorder(Callbacks):
    def __init__(self) -> None:
        self.epochs: list[int] = []

    def on_epoch_end(self, progress: Progress) -> None:
        self.epochs.append(progress.epoch)


def spec(gpus: int, batch: int, epochs: int = 2) -> dict:
    return tiny_spec(
        training={
            "epochs": epochs,
            "batch_size": batch,
            "lr": 0.05,
            "seed": 0,
            "precision": "fp32",
            "device": "cpu",
        },
        resources={"gpus": gpus},
    )


def test_two_ranks_match_one_process_with_the_global_batch(tmp_path) -> None:
    """Two ranks of batch 16 take the same global batches as one process of batch 32,
    and DDP averages their gradients: the weights end up the same (up to float sums)."""
    rec = Recorder()
    parallel = kdcore.distill(spec(2, 16), tmp_path / "ddp", callbacks=rec)
    single = kdcore.distill(spec(1, 32), tmp_path / "one")
    assert parallel["steps"] == single["steps"] > 0
    assert (parallel["processes"], single["processes"]) == (2, 1)
    assert rec.epochs == [1, 2]  # reported once, by rank 0
    a = load_file(tmp_path / "ddp/student.safetensors")
    b = load_file(tmp_path / "one/student.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    assert sorted(p.name for p in (tmp_path / "ddp/checkpoints").iterdir()) == [
        "epoch1.pt",
        "epoch2.pt",
    ]


def test_a_parallel_run_resumes_from_its_checkpoint(tmp_path) -> None:
    straight = kdcore.distill(spec(2, 16, epochs=2), tmp_path / "straight")
    resumed = kdcore.distill(
        spec(2, 16, epochs=2),
        tmp_path / "resumed",
        resume_from=tmp_path / "straight/checkpoints/epoch1.pt",
    )
    assert resumed["steps"] == straight["steps"]
    a = load_file(tmp_path / "straight/student.safetensors")
    b = load_file(tmp_path / "resumed/student.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
