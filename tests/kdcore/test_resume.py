"""N steps straight == N/2 steps, checkpoint, a fresh process loads it, N/2 more: bit-identical."""

import json
import subprocess
import sys

import pytest
from safetensors.torch import load_file

import kdcore
from kdcore.errors import Cancelled
from tests.support.specs import tiny_spec
from tests.support.stops import StopBeforeStep

pytestmark = pytest.mark.integration  # a fresh process resumes


@pytest.mark.parametrize(
    "method,precision", [("kd", "fp32"), ("fitnet", "auto"), ("crd", "fp32"), ("dkd", "fp32")]
)
def test_resume_in_a_fresh_process_is_bit_exact(tmp_path, method, precision):
    """crd: its memory banks, Z and negative draws; dkd: its warmup ramp (3 epochs); kd:
    the int8 teacher calibrated on seeded batches."""
    spec = tiny_spec(
        student={"arch": "small_cnn"},
        augment={"crop_padding": 1, "hflip": True},
        distillation={"method": method, "kd_weight": 0.5, "crd_negatives": 64, "warmup_epochs": 3},
        training={"epochs": 3, "precision": precision, "optimizer": "sgd", "nesterov": True},
    )
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))

    kdcore.distill(spec, tmp_path / "straight")
    report = json.loads((tmp_path / "straight" / "report.json").read_text())
    total = report["steps"]
    if method == "kd":  # the fresh process rebuilds the same int8 teacher (fast_teacher)
        assert report["teacher_forward"]["precision"] == "int8"
    assert total == 3 * (185 // 32)  # 256 - 51 test - 20 val = 185 train samples, 5 steps/epoch

    half = total // 2 + 1  # stop in the middle of an epoch, not on a boundary
    with pytest.raises(Cancelled):
        kdcore.distill(spec, tmp_path / "resumed", callbacks=StopBeforeStep(half))
    ckpt = tmp_path / "resumed" / "checkpoints" / f"interrupted-step{half}.pt"
    assert ckpt.exists()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "kdcore.cli",
            "distill",
            str(spec_path),
            "--out",
            str(tmp_path / "resumed"),
            "--resume",
            str(ckpt),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )

    a = load_file(tmp_path / "straight" / "student.safetensors")
    b = load_file(tmp_path / "resumed" / "student.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].equal(b[key]), key


def test_resume_with_another_spec_is_refused(tmp_path):
    spec = tiny_spec(training={"epochs": 2})
    kdcore.distill(spec, tmp_path / "a")
    other = tiny_spec(training={"epochs": 3})
    with pytest.raises(kdcore.CheckpointError, match="different spec"):
        kdcore.distill(other, tmp_path / "b", resume_from=tmp_path / "a/checkpoints/epoch2.pt")


def test_resume_accepts_the_same_files_at_other_paths(tmp_path):
    """A resumed job may run on another host, whose copy of the teacher lives elsewhere."""
    import shutil

    from safetensors.torch import save_file

    from kdcore.models import build_model

    first = tmp_path / "host-a" / "teacher.safetensors"
    first.parent.mkdir()
    save_file(build_model("small_cnn", 4, (1, 8, 8)).state_dict(), str(first))
    spec = tiny_spec(
        training={"epochs": 2}, teacher={"arch": "small_cnn", "checkpoint": str(first)}
    )
    kdcore.distill(spec, tmp_path / "a")
    second = tmp_path / "host-b" / "teacher.safetensors"
    second.parent.mkdir()
    shutil.copyfile(first, second)
    moved = tiny_spec(
        training={"epochs": 2}, teacher={"arch": "small_cnn", "checkpoint": str(second)}
    )
    steps = Steps()
    kdcore.distill(
        moved, tmp_path / "b", callbacks=steps, resume_from=tmp_path / "a/checkpoints/epoch1.pt"
    )
    # it went on from epoch 1 (one epoch trained here, not two from scratch), and ended
    # where the run that never stopped ended, bit for bit
    assert steps.epochs == [2]
    a = load_file(tmp_path / "a" / "student.safetensors")
    b = load_file(tmp_path / "b" / "student.safetensors")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


class Steps(kdcore.Callbacks):
    def __init__(self):
        self.epochs: list[int] = []

    def on_epoch_end(self, progress):
        self.epochs.append(progress.epoch)
