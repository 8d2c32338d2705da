"""A student that starts from its own checkpoint, its classifier head replaced when the
class count differs (`student.reset_head`)."""

import pytest
import torch
from safetensors.torch import save_file

import kdcore
from kdcore.checks.validate import parse_spec
from kdcore.errors import CheckpointError, SpecError
from kdcore.image.data import load_dataset
from kdcore.image.run import build_role
from kdcore.models import build_model
from tests.support.specs import tiny_spec


@pytest.fixture()
def pretrained(tmp_path):
    """small_cnn weights for 7 classes (the task has 4), every tensor recognisable."""
    torch.manual_seed(1)
    model = build_model("small_cnn", 7, (1, 8, 8))
    path = tmp_path / "pretrained.safetensors"
    save_file(model.state_dict(), str(path))
    return model, path


def test_reset_head_keeps_the_body_and_starts_a_fresh_head(pretrained):
    source, path = pretrained
    spec = parse_spec(
        tiny_spec(student={"arch": "small_cnn", "checkpoint": str(path), "reset_head": True})
    )
    data = load_dataset(spec.dataset, 0)
    student, classes = build_role(spec.student, "student", data)
    assert classes == 4 and student.fc.weight.shape == (4, 64)
    body = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    for key, value in body.items():
        assert torch.equal(student.state_dict()[key], value), key


def test_without_reset_head_the_head_mismatch_is_named(pretrained, tmp_path):
    _, path = pretrained
    spec = tiny_spec(student={"arch": "small_cnn", "checkpoint": str(path)})
    with pytest.raises(CheckpointError, match=r"fc.weight: file has \[7, 64\]"):
        kdcore.distill(spec, tmp_path / "out")


def test_the_report_says_the_student_was_initialised(pretrained, tmp_path):
    _, path = pretrained
    spec = tiny_spec(
        student={"arch": "small_cnn", "checkpoint": str(path), "reset_head": True},
        training={"epochs": 1},
    )
    report = kdcore.distill(spec, tmp_path / "out")
    assert report["student"]["initialised_from_checkpoint"] is True
    assert report["student"]["reset_head"] is True


def test_reset_head_is_refused_where_it_means_nothing():
    with pytest.raises(SpecError, match="reset_head needs a checkpoint"):
        parse_spec(tiny_spec(student={"arch": "small_cnn", "reset_head": True}))
    with pytest.raises(SpecError, match="reset_head is for the student"):
        parse_spec(tiny_spec(teacher={"arch": "small_cnn", "reset_head": True}))
