"""The readiness section and the gate (kdcore.shipping.readiness) on outputs built by hand."""

import pytest
import torch

from kdcore.shipping.readiness import (
    evaluate_gate,
    expected_calibration_error,
    introduced_confusions,
    per_class_accuracy,
    readiness,
)
from kdcore.spec import GateSpec, JobSpec


def _logits(pred: list[int], classes: int = 3, confidence: float = 5.0) -> torch.Tensor:
    out = torch.zeros(len(pred), classes)
    out[torch.arange(len(pred)), torch.tensor(pred)] = confidence
    return out


def test_per_class_accuracy_and_a_class_without_samples():
    y = torch.tensor([0, 0, 1, 1])
    pred = torch.tensor([0, 1, 1, 1])
    assert per_class_accuracy(pred, y, 3) == [0.5, 1.0, None]


def test_ece_is_zero_when_confidence_matches_accuracy_and_large_when_overconfident():
    y = torch.tensor([0, 1, 0, 1])
    # confident (p ~ 1) and right: no gap
    assert expected_calibration_error(_logits([0, 1, 0, 1], 2, 50.0), y) == pytest.approx(
        0, abs=1e-6
    )
    # confident and half wrong: gap ~ 0.5
    assert expected_calibration_error(_logits([0, 0, 0, 0], 2, 50.0), y) == pytest.approx(0.5)
    # unsure (p = 0.5) and half right: calibrated
    assert expected_calibration_error(torch.zeros(4, 2) + torch.tensor([0.0, 1e-6]), y) == (
        pytest.approx(0, abs=1e-3)
    )


def test_confusions_count_only_what_the_teacher_got_right():
    y = torch.tensor([0, 0, 0, 1, 2])
    teacher = torch.tensor([0, 0, 1, 1, 2])  # wrong on sample 2
    student = torch.tensor([2, 2, 2, 1, 1])
    found = introduced_confusions(student, teacher, y, ["a", "b", "c"])
    assert found == [
        {"true": "a", "predicted": "c", "count": 2},  # sample 2 is not counted
        {"true": "c", "predicted": "b", "count": 1},
    ]


def test_readiness_names_the_worst_class():
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    section = readiness(
        _logits([0, 1, 1, 1, 2, 2]), _logits([0, 0, 1, 1, 2, 2]), y, ["a", "b", "c"]
    )
    assert section["largest_class_drop"] == {"class": "a", "drop": 0.5}
    assert section["agreement"] == pytest.approx(5 / 6)
    assert [row["samples"] for row in section["per_class"]] == [2, 2, 2]


REPORT = {
    "teacher": {"accuracy": 0.95},
    "student": {"accuracy": 0.93, "latency_ms_batch1": 1.5},
    "agreement": 0.96,
    "readiness": {"largest_class_drop": {"class": "cat", "drop": 0.08}},
}


def test_gate_checks_each_limit_it_sets_and_only_those():
    gate = GateSpec(max_accuracy_drop=0.01, max_latency_ms_batch1=2.0)
    verdict = evaluate_gate(gate, REPORT)
    assert set(verdict["checks"]) == {"accuracy_drop", "latency_ms_batch1"}
    assert verdict["checks"]["accuracy_drop"] == {"value": 0.02, "limit": 0.01, "passed": False}
    assert verdict["checks"]["latency_ms_batch1"]["passed"] is True
    assert verdict["passed"] is False
    ok = evaluate_gate(GateSpec(max_class_drop=0.1, min_agreement=0.95), REPORT)
    assert ok["passed"] is True and ok["checks"]["class_drop"]["class"] == "cat"
    assert evaluate_gate(GateSpec(min_agreement=0.97), REPORT)["passed"] is False


def test_a_value_the_report_lacks_fails_its_check():
    verdict = evaluate_gate(GateSpec(min_agreement=0.5), {"student": {"mse": 1.0}})
    assert verdict["checks"]["agreement"] == {"value": None, "limit": 0.5, "passed": False}


@pytest.mark.parametrize(
    "gate",
    [{"min_agreement": 1.5}, {"max_latency_ms_batch1": 0}, {"max_class_drop": -0.1}, {"x": 1}],
)
def test_gate_limits_out_of_range_are_refused(gate):
    with pytest.raises(ValueError):
        GateSpec.model_validate(gate)


def test_the_onnx_variants_bring_student_onnx_with_them():
    spec = JobSpec.model_validate(
        {
            "kind": "train",
            "student": {"arch": "mlp"},
            "dataset": {"builtin": "digits"},
            "export": ["onnx_int8"],
        }
    )
    assert spec.export == ["safetensors", "onnx_int8", "onnx"]


def test_min_kd_gain_checks_the_gain_in_its_unit():
    report = {"kd_gain": -1.5, "kd_gain_unit": "points"}
    verdict = evaluate_gate(GateSpec(min_kd_gain=0.0), report)
    assert verdict["passed"] is False
    assert verdict["checks"]["kd_gain"] == {
        "value": -1.5,
        "limit": 0.0,
        "passed": False,
        "unit": "points",
    }
    assert evaluate_gate(GateSpec(min_kd_gain=-2.0), report)["passed"] is True
    # no baseline was trained: the check fails rather than passing silently
    assert evaluate_gate(GateSpec(min_kd_gain=0.0), {})["checks"]["kd_gain"]["passed"] is False


def _spec(**over):
    base = {
        "kind": "distill",
        "teacher": {"arch": "small_cnn"},
        "student": {"arch": "mlp_small"},
        "dataset": {"name": "digits"},
    }
    return JobSpec.model_validate({**base, **over})


def test_min_kd_gain_needs_a_baseline_and_text_jobs_have_no_latency_check():
    with pytest.raises(ValueError, match="baseline: true"):
        _spec(gate={"min_kd_gain": 0.5})
    assert _spec(gate={"min_kd_gain": 0.5}, baseline=True).gate.min_kd_gain == 0.5
    with pytest.raises(ValueError, match="tokens/s"):
        JobSpec.model_validate(
            {
                "kind": "train",
                "task": "causal_lm",
                "student": {"arch": "gpt2", "config": {"n_layer": 1}},
                "dataset": {"name": "synthetic_text"},
                "gate": {"max_latency_ms_batch1": 5},
            }
        )
