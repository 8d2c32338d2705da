"""The weights a job keeps (the best validation epoch or the last), early stopping, and
both across a resume in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import kdcore
from kdcore.checks.validate import parse_spec
from kdcore.errors import Cancelled, SpecError
from kdcore.io.checkpoints import load_checkpoint
from tests.support.specs import tiny_spec
from tests.support.stops import StopBeforeStep


def _spec(**training):
    # a high learning rate makes validation accuracy go up and down between epochs
    return tiny_spec(training={"epochs": 5, "lr": 0.5, **training})


def _report(folder):
    return json.loads((folder / "report.json").read_text())


def _same(weights, state):
    return all(torch.equal(weights[k], state[k].cpu()) for k in weights)


def test_best_keeps_the_weights_of_the_best_validation_epoch(tmp_path):
    kdcore.distill(_spec(), tmp_path, keep_checkpoints=None)
    report = _report(tmp_path)
    accuracies = [h["accuracy"] for h in report["history"]]  # validation accuracy
    best = 1 + accuracies.index(max(accuracies))  # the first epoch that reached it
    assert report["selection"] == "best" and report["selected_epoch"] == best
    assert report["stopped_early_at_epoch"] is None
    student = load_file(tmp_path / "student.safetensors")
    chosen = load_checkpoint(tmp_path / "checkpoints" / f"epoch{best}.pt")["model"]
    assert _same(student, chosen)
    if best != 5:  # and not the last epoch's, when they differ
        assert not _same(student, load_checkpoint(tmp_path / "checkpoints" / "epoch5.pt")["model"])


def test_last_keeps_the_last_epoch(tmp_path):
    kdcore.distill(_spec(select="last"), tmp_path, keep_checkpoints=None)
    report = _report(tmp_path)
    assert report["selection"] == "last" and report["selected_epoch"] == 5
    last = load_checkpoint(tmp_path / "checkpoints" / "epoch5.pt")["model"]
    assert _same(load_file(tmp_path / "student.safetensors"), last)


def test_early_stopping_stops_after_patience_epochs_without_improvement(tmp_path):
    # no epoch beats the first by a whole accuracy point of 1.0: stop after 1 + 2
    spec = _spec(epochs=8, early_stopping={"patience": 2, "min_delta": 1.0})
    kdcore.distill(spec, tmp_path, keep_checkpoints=None)
    report = _report(tmp_path)
    assert report["stopped_early_at_epoch"] == 3 and len(report["history"]) == 3
    assert report["selected_epoch"] == 1
    assert (tmp_path / "checkpoints" / "epoch3.pt").exists()  # written when it stopped
    first = load_checkpoint(tmp_path / "checkpoints" / "epoch1.pt")["model"]
    assert _same(load_file(tmp_path / "student.safetensors"), first)


def test_a_resumed_run_remembers_the_best_epoch_and_an_early_stop(tmp_path):
    spec = _spec(epochs=6, early_stopping={"patience": 3, "min_delta": 0.0})
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    kdcore.distill(spec, tmp_path / "straight")
    straight = _report(tmp_path / "straight")
    steps_per_epoch = straight["history"][0]["step"]
    stop = 3 * steps_per_epoch + 1  # early in epoch 4: the best is in the past
    with pytest.raises(Cancelled):
        kdcore.distill(spec, tmp_path / "resumed", callbacks=StopBeforeStep(stop))
    ckpt = tmp_path / "resumed" / "checkpoints" / f"interrupted-step{stop}.pt"
    assert load_checkpoint(ckpt)["best"]["epoch"] is not None
    subprocess.run(
        [sys.executable, "-m", "kdcore.cli", "distill", str(tmp_path / "spec.json"),
         "--out", str(tmp_path / "resumed"), "--resume", str(ckpt)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    resumed = _report(tmp_path / "resumed")
    for key in ("selected_epoch", "stopped_early_at_epoch"):
        assert resumed[key] == straight[key], key
    a = load_file(tmp_path / "straight" / "student.safetensors")
    assert _same(a, load_file(tmp_path / "resumed" / "student.safetensors"))
    if straight["stopped_early_at_epoch"] is not None:  # resuming its last checkpoint: done
        last = straight["stopped_early_at_epoch"]
        again = kdcore.distill(
            spec,
            tmp_path / "again",
            resume_from=tmp_path / "straight" / "checkpoints" / f"epoch{last}.pt",
        )
        assert again["stopped_early_at_epoch"] == last and len(again["history"]) == last


def test_best_and_early_stopping_need_a_validation_split():
    no_val = {"dataset": {"val_fraction": 0.0}}
    spec = parse_spec(tiny_spec(**no_val))  # the default quietly keeps the last epoch
    assert spec.training.select == "best" and not spec.selects_best
    for training in ({"select": "best"}, {"early_stopping": {"patience": 2}}):
        with pytest.raises(SpecError, match="validation split"):
            parse_spec(tiny_spec(training=training, **no_val))
    with pytest.raises(SpecError):
        parse_spec(tiny_spec(training={"early_stopping": {"patience": 0}}))
    with pytest.raises(SpecError):
        parse_spec(tiny_spec(training={"early_stopping": {"patience": 2, "min_delta": -1}}))


def test_an_old_checkpoint_without_the_new_fields_still_resumes(tmp_path):
    """A checkpoint's spec from before a field existed validates to today's defaults."""
    spec = _spec(epochs=2)
    with pytest.raises(Cancelled):
        kdcore.distill(spec, tmp_path, callbacks=StopBeforeStep(3))
    ckpt_path = tmp_path / "checkpoints" / "interrupted-step3.pt"
    ckpt = load_checkpoint(ckpt_path)
    for field in ("select", "early_stopping", "channels_last"):
        del ckpt["spec"]["training"][field]
    torch.save(ckpt, ckpt_path)
    report = kdcore.distill(spec, tmp_path, resume_from=ckpt_path)
    assert report["epochs"] == 2
