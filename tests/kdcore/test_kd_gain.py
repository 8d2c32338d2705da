"""kdcore.shipping.kd_gain: one unit per task; a student worse than its baseline, plainly."""

import pytest

from kdcore.shipping import kd_gain


def test_accuracy_gain_is_in_percentage_points():
    out = kd_gain.compare({"accuracy": 0.9749}, {"accuracy": 0.9694})
    assert out["kd_gain_unit"] == "points"
    assert out["kd_gain"] == pytest.approx(0.55)
    assert out["kd_helped"] is True
    assert "97.49%" in out["kd_verdict"] and "96.94%" in out["kd_verdict"]
    assert out["kd_verdict"].startswith("Distillation helped")


def test_a_student_worse_than_its_baseline_is_said_plainly():
    out = kd_gain.compare({"accuracy": 0.90, "loss": 0.3}, {"accuracy": 0.93})
    assert out["kd_gain"] == pytest.approx(-3.0)
    assert out["kd_helped"] is False
    assert "worse" in out["kd_verdict"] and "-3.00 points" in out["kd_verdict"]
    assert "without the teacher is the better model" in out["kd_verdict"]


@pytest.mark.parametrize(
    ("key", "unit"), [("perplexity", "perplexity_ratio"), ("mse", "mse_ratio")]
)
def test_lower_is_better_figures_are_a_ratio_of_baseline_over_student(key, unit):
    better = kd_gain.compare({key: 20.0}, {key: 25.0})
    assert better["kd_gain_unit"] == unit
    assert better["kd_gain"] == pytest.approx(1.25) and better["kd_helped"] is True
    worse = kd_gain.compare({key: 25.0}, {key: 20.0})
    assert worse["kd_gain"] == pytest.approx(0.8) and worse["kd_helped"] is False
    assert "worse" in worse["kd_verdict"]


def test_a_tie_is_no_gain_and_no_loss():
    out = kd_gain.compare({"accuracy": 0.5}, {"accuracy": 0.5})
    assert out["kd_gain"] == 0 and out["kd_helped"] is False
    assert "no difference" in out["kd_verdict"]


def test_nothing_to_compare_gives_no_fields():
    assert kd_gain.compare({"accuracy": 0.5}, {}) == {}
    assert kd_gain.compare({}, {"accuracy": 0.5}) == {}
