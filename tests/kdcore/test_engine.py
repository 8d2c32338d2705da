"""The one training loop's promises (kdcore.engine.loop), held once for every task by
the same tests: exact resume in a fresh process, the best or last epoch kept, early
stopping, pruning that keeps the checkpoint a run resumed from, every RNG in the
checkpoint, and progress with a rate in the task's own unit."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import kdcore
from kdcore.errors import Cancelled
from kdcore.io.checkpoints import load_checkpoint
from tests.support.encoders import embedding_spec, write_teacher
from tests.support.encoders import write_corpus as encoder_corpus
from tests.support.specs import tiny_spec
from tests.support.stops import StopBeforeTrainingStep as StopBeforeStep
from tests.support.text import GPT2_STUDENT, train_tokenizer, write_corpus


@dataclass
class Case:
    """One task's small job, and where its weights and quality land."""

    name: str
    base: dict[str, Any]
    weights: str  # the trained model's file in the output folder
    metric: str  # the validation metric the best epoch is chosen on
    higher_is_better: bool
    unit: str  # the progress rate's unit

    def spec(self, **training: Any) -> dict[str, Any]:
        spec = json.loads(json.dumps(self.base))
        spec["training"] = {**spec["training"], **training}
        return spec


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("engine_text")
    # a small corpus a GPT-2 overfits at a constant learning rate: validation
    # perplexity goes down, then up (here epoch 3 is the best of 4)
    path = write_corpus(tmp / "corpus.txt", documents=8)
    return path, train_tokenizer(path, tmp / "tokenizer.json")


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    """A sentence-transformers teacher and passages (task embedding)."""
    tmp = tmp_path_factory.mktemp("engine_embedding")
    return write_teacher(tmp / "teacher"), encoder_corpus(tmp / "passages.txt", n=120)


@pytest.fixture(params=["image", "text", "embedding"])
def case(request) -> Case:
    if request.param == "embedding":
        teacher, passages = request.getfixturevalue("encoder")
        base = embedding_spec(
            str(teacher),
            str(passages),
            training={"epochs": 4, "batch_size": 32, "lr": 3e-3, "schedule": "constant"},
            baseline=False,
            export=["safetensors"],
        )
        base["training"]["device"] = "cpu"
        return Case("embedding", base, "student.safetensors", "mse", False, "tokens")
    if request.param == "image":
        # a high learning rate makes validation accuracy go up and down between epochs
        base = tiny_spec(training={"epochs": 4, "lr": 0.5})
        return Case("image", base, "student.safetensors", "accuracy", True, "images")
    path, tok = request.getfixturevalue("corpus")
    base = {
        "kind": "train",
        "task": "causal_lm",
        "student": {"arch": "hf:GPT2LMHeadModel", "config": GPT2_STUDENT},
        "dataset": {"name": "text", "path": str(path), "seq_len": 32, "tokenizer": str(tok)},
        "training": {
            "epochs": 4,
            "batch_size": 4,  # 3 steps an epoch: a cut can fall mid-epoch
            "optimizer": "adamw",
            "lr": 3e-2,
            "schedule": "constant",
            "device": "cpu",
            "seed": 0,
        },
    }
    return Case("text", base, "model.safetensors", "perplexity", False, "tokens")


def _run(spec: dict[str, Any], out: Path, **kw: Any) -> dict[str, Any]:
    """A distill spec goes to kdcore.distill, a train spec to kdcore.train."""
    runner = kdcore.distill if spec["kind"] == "distill" else kdcore.train
    return runner(spec, out, **kw)


def _same(saved: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> bool:
    """A saved model's tensors are the state's (a Hugging Face folder leaves out a tied
    copy, e.g. GPT-2's lm_head)."""
    return saved.keys() <= state.keys() and all(
        torch.equal(saved[k], state[k].cpu()) for k in saved
    )


@pytest.mark.integration  # a fresh process resumes
def test_a_run_cut_mid_epoch_resumes_in_a_fresh_process_bit_for_bit(case, tmp_path):
    spec = case.spec(epochs=2)
    straight = _run(spec, tmp_path / "straight")
    half = straight["steps"] // 2 + 1  # in the middle of an epoch, not on a boundary
    with pytest.raises(Cancelled):
        _run(spec, tmp_path / "cut", callbacks=StopBeforeStep(half))
    checkpoint = tmp_path / "cut" / "checkpoints" / f"interrupted-step{half}.pt"
    state = load_checkpoint(checkpoint)
    assert state["step"] == half and set(state["rng"]) == {"torch", "cuda"}
    assert state["rng"]["cuda"] is None  # kept on a GPU; none to keep here
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    command = [sys.executable, "-m", "kdcore.cli", spec["kind"], str(spec_path)]
    command += ["--out", str(tmp_path / "cut"), "--resume", str(checkpoint)]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    a, b = (load_file(tmp_path / folder / case.weights) for folder in ("straight", "cut"))
    assert a.keys() == b.keys() and _same(a, b)


def test_select_best_keeps_the_best_validation_epoch_and_last_the_last(case, tmp_path):
    report = _run(case.spec(), tmp_path / "best", keep_checkpoints=None)
    values = [h[case.metric] for h in report["history"]]
    best = 1 + values.index(max(values) if case.higher_is_better else min(values))
    assert report["selection"] == "best" and report["selected_epoch"] == best
    kept = load_file(tmp_path / "best" / case.weights)
    chosen = load_checkpoint(tmp_path / "best" / "checkpoints" / f"epoch{best}.pt")["model"]
    assert _same(kept, chosen)

    report = _run(case.spec(select="last"), tmp_path / "last", keep_checkpoints=None)
    assert report["selection"] == "last" and report["selected_epoch"] == 4
    last = load_checkpoint(tmp_path / "last" / "checkpoints" / "epoch4.pt")["model"]
    assert _same(load_file(tmp_path / "last" / case.weights), last)
    if best != 4:  # the two settings kept different weights
        assert not _same(kept, last)


def test_early_stopping_ends_the_run_after_patience_epochs_without_improvement(case, tmp_path):
    # no epoch beats the first by more than this: stop after 1 + patience epochs
    spec = case.spec(epochs=8, early_stopping={"patience": 2, "min_delta": 1e5})
    report = _run(spec, tmp_path, keep_checkpoints=None)
    assert report["stopped_early_at_epoch"] == 3 and len(report["history"]) == 3
    assert report["selected_epoch"] == 1  # the best: no later epoch counted as better
    assert (tmp_path / "checkpoints" / "epoch3.pt").exists()


def test_pruning_keeps_the_checkpoint_a_run_resumed_from(case, tmp_path):
    spec = case.spec(epochs=4)
    _run(spec, tmp_path / "a", keep_checkpoints=None)
    resumed_from = tmp_path / "a" / "checkpoints" / "epoch1.pt"
    _run(spec, tmp_path / "a", resume_from=resumed_from, keep_checkpoints=1)
    names = sorted(p.name for p in (tmp_path / "a" / "checkpoints").glob("epoch*.pt"))
    assert names == ["epoch1.pt", "epoch4.pt"]


class Record(kdcore.Callbacks):
    def __init__(self):
        self.steps: list[kdcore.Progress] = []
        self.epochs: list[kdcore.Progress] = []

    def on_step(self, progress):
        if progress.stage == "training":  # not a teacher's pass before the loop
            self.steps.append(progress)

    def on_epoch_end(self, progress):
        self.epochs.append(progress)


def test_progress_counts_steps_and_epochs_with_a_rate_in_the_tasks_unit(case, tmp_path):
    record = Record()
    report = _run(case.spec(epochs=2), tmp_path, callbacks=record)
    assert [p.epoch for p in record.epochs] == [1, 2]
    assert record.epochs[-1].step == report["steps"] == record.steps[-1].total_steps
    assert all(a.step < b.step for a, b in zip(record.steps, record.steps[1:], strict=False))
    end = record.epochs[-1]
    rate = end.tokens_per_s if case.unit == "tokens" else end.images_per_s
    assert rate is not None and rate > 0
    assert end.metrics[f"{case.unit}_per_s"] == rate  # the epoch's own rate
    other = "images_per_s" if case.unit == "tokens" else "tokens_per_s"
    assert other not in end.to_dict() or end.to_dict()[other] is None
    assert case.metric in end.metrics and end.eta_s == pytest.approx(0.0, abs=1e-6)
