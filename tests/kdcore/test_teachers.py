"""Several teachers: the soft targets are the weighted mean of their softened
probabilities (numpy golden), and a job with `teachers` reports each of them."""

import json

import numpy as np
import pytest
import torch
from torch import nn

import kdcore
from kdcore.checks.validate import parse_spec
from kdcore.errors import SpecError
from kdcore.models.ensemble import TeacherEnsemble
from tests.support.specs import tiny_spec


class Fixed(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = torch.tensor(logits, dtype=torch.float64)

    def forward(self, x):
        return self.logits


def np_softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_soft_targets_are_the_weighted_mean_of_softened_probabilities(temperature):
    rng = np.random.default_rng(0)
    z1, z2, z3 = (rng.normal(size=(6, 5)) * 4 for _ in range(3))
    ensemble = TeacherEnsemble(
        [Fixed(z1), Fixed(z2), Fixed(z3)], [1.0, 3.0, 4.0], temperature, regression=False
    )
    out = ensemble(torch.zeros(6, 1)).double()
    expected = (
        1 / 8 * np_softmax(z1 / temperature)
        + 3 / 8 * np_softmax(z2 / temperature)
        + 4 / 8 * np_softmax(z3 / temperature)
    )
    got = torch.softmax(out / temperature, dim=1).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-12)
    # not the mean of the logits
    mean_logits = np_softmax((z1 / 8 + 3 * z2 / 8 + z3 / 2) / temperature)
    assert not np.allclose(got, mean_logits, rtol=1e-3)


def test_regression_teachers_average_their_outputs():
    ensemble = TeacherEnsemble(
        [Fixed([[1.0], [2.0]]), Fixed([[3.0], [6.0]])], [1.0, 1.0], 4.0, regression=True
    )
    assert ensemble(torch.zeros(2, 1)).flatten().tolist() == [2.0, 4.0]


def test_a_job_with_two_teachers_reports_each(tmp_path):
    spec = tiny_spec(
        teachers=[{"arch": "small_cnn", "weight": 2.0}, {"arch": "mlp", "weight": 1.0}],
        training={"epochs": 1},
    )
    del spec["teacher"]
    report = kdcore.distill(spec, tmp_path)
    assert [t["arch"] for t in report["teachers"]] == ["small_cnn", "mlp"]
    assert [t["weight"] for t in report["teachers"]] == [2.0, 1.0]
    for t in report["teachers"]:
        assert 0.0 <= t["accuracy"] <= 1.0 and t["parameters"] > 0
    assert report["teacher"]["arch"] == "small_cnn + mlp"
    assert report["teacher"]["parameters"] == sum(t["parameters"] for t in report["teachers"])
    assert json.loads((tmp_path / "report.json").read_text())["teachers"] == report["teachers"]


def test_teacher_and_teachers_together_are_refused():
    spec = tiny_spec(teachers=[{"arch": "small_cnn"}])
    with pytest.raises(SpecError, match="either teacher or teachers"):
        parse_spec(spec)


def test_feature_methods_take_one_teacher():
    spec = tiny_spec(teachers=[{"arch": "small_cnn"}], distillation={"method": "at"})
    del spec["teacher"]
    with pytest.raises(SpecError) as info:
        parse_spec(spec)
    assert info.value.errors[0][0] == "/teachers"
    assert "one teacher" in info.value.errors[0][1]


def test_unknown_teacher_arch_points_at_its_index():
    spec = tiny_spec(teachers=[{"arch": "small_cnn"}, {"arch": "resnet9000"}])
    del spec["teacher"]
    with pytest.raises(SpecError) as info:
        parse_spec(spec)
    assert info.value.errors[0][0] == "/teachers/1/arch"
