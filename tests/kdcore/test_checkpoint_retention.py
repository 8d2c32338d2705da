"""Checkpoint retention: the newest N `epochN.pt` are kept, plus the one a run resumed
from; older ones are deleted only after the new one was renamed into place."""

import subprocess
import sys

import pytest

import kdcore
from kdcore.io.checkpoints import checkpoint_epoch, prune_checkpoints
from tests.support.specs import tiny_spec


def _epochs(folder):
    return sorted(e for p in folder.glob("*.pt") if (e := checkpoint_epoch(p)) is not None)


def test_prune_keeps_the_newest_and_the_protected_and_nothing_else_named_otherwise(tmp_path):
    for name in ("epoch1.pt", "epoch2.pt", "epoch10.pt", "epoch3.pt", "epoch4.pt"):
        (tmp_path / name).write_bytes(b"x")
    for name in ("interrupted-step7.pt", "epochx.pt", "epoch5.pt.tmp", "notes.txt"):
        (tmp_path / name).write_bytes(b"y")
    deleted = prune_checkpoints(tmp_path, keep=2, protect=frozenset({2}))
    assert sorted(p.name for p in deleted) == ["epoch1.pt", "epoch3.pt"]
    # numeric order, not text order: epoch10 is the newest
    assert _epochs(tmp_path) == [2, 4, 10]
    others = {"interrupted-step7.pt", "epochx.pt", "epoch5.pt.tmp", "notes.txt"}
    assert others <= {p.name for p in tmp_path.iterdir()}


def test_a_run_keeps_the_last_n_checkpoints(tmp_path):
    spec = tiny_spec(training={"epochs": 5})
    kdcore.distill(spec, tmp_path / "two", keep_checkpoints=2)
    assert _epochs(tmp_path / "two" / "checkpoints") == [4, 5]
    kdcore.distill(spec, tmp_path / "all")  # the library's default keeps every epoch
    assert _epochs(tmp_path / "all" / "checkpoints") == [1, 2, 3, 4, 5]


def test_a_resumed_run_keeps_the_checkpoint_it_resumed_from(tmp_path):
    spec = tiny_spec(training={"epochs": 5})
    out = tmp_path / "run"
    kdcore.distill(spec, out, keep_checkpoints=5)
    for epoch in (3, 4, 5):  # as if the run had stopped after epoch 2
        (out / "checkpoints" / f"epoch{epoch}.pt").unlink()
    resumed = kdcore.distill(
        spec, out, resume_from=out / "checkpoints" / "epoch2.pt", keep_checkpoints=1
    )
    assert resumed["steps"] > 0
    assert _epochs(out / "checkpoints") == [2, 5]


@pytest.mark.slow
def test_the_cli_keeps_two_by_default_and_refuses_a_negative_count(tmp_path):
    import json

    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(tiny_spec(training={"epochs": 4})))
    command = [sys.executable, "-m", "kdcore.cli", "distill", str(spec_path)]
    subprocess.run([*command, "--out", str(tmp_path / "a")], check=True, capture_output=True)
    assert _epochs(tmp_path / "a" / "checkpoints") == [3, 4]
    subprocess.run(
        [*command, "--out", str(tmp_path / "b"), "--keep-checkpoints", "0"],
        check=True,
        capture_output=True,
    )
    assert _epochs(tmp_path / "b" / "checkpoints") == [1, 2, 3, 4]
    bad = subprocess.run(
        [*command, "--out", str(tmp_path / "c"), "--keep-checkpoints", "-1"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "not a whole number" in bad.stderr
    assert not (tmp_path / "c").exists()
