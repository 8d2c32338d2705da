"""Is the distilled student ready to ship? The report's `readiness` section (per-class
accuracy, calibration, agreement, the confusions distillation introduced) and the
`gate` verdict a job asks for (spec `gate`), both on the test split.

A failed gate does not fail the job: the student is still written and the verdict
travels in the report, the webhook and the dashboard, for whoever decides to ship.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch import Tensor

from kdcore.spec import GateSpec

# the teacher's check before training (kdcore.image.preflight, kdcore.text.preflight):
# scored on this many held-out samples, it must beat chance by this factor
PREFLIGHT_SAMPLES = 512
CHANCE_MARGIN = 1.5

ECE_BINS = 15
TOP_CONFUSIONS = 5


def per_class_accuracy(pred: Tensor, y: Tensor, num_classes: int) -> list[float | None]:
    """Accuracy on each class's test samples; None for a class with none."""
    out: list[float | None] = []
    for c in range(num_classes):
        mask = y == c
        out.append(float((pred[mask] == c).float().mean()) if mask.any() else None)
    return out


def expected_calibration_error(logits: Tensor, y: Tensor, bins: int = ECE_BINS) -> float:
    """ECE (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017): samples
    binned by confidence (max softmax probability) into equal-width bins; the mean over
    samples of |accuracy - confidence| of their bin."""
    probs = torch.softmax(logits.float(), dim=1)
    confidence, pred = probs.max(dim=1)
    correct = (pred == y).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = torch.zeros(())
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            gap = (correct[in_bin].mean() - confidence[in_bin].mean()).abs()
            ece += gap * in_bin.float().mean()
    return float(ece)


def introduced_confusions(
    student_pred: Tensor, teacher_pred: Tensor, y: Tensor, class_names: list[str]
) -> list[dict[str, Any]]:
    """The most frequent (true class -> student's class) mistakes on samples the
    teacher got right: what distillation lost, not what both get wrong."""
    lost = (teacher_pred == y) & (student_pred != y)
    pairs = Counter(zip(y[lost].tolist(), student_pred[lost].tolist(), strict=True))
    return [
        {"true": class_names[t], "predicted": class_names[p], "count": n}
        for (t, p), n in pairs.most_common(TOP_CONFUSIONS)
    ]


def readiness(
    student_out: Tensor, teacher_out: Tensor, y: Tensor, class_names: list[str]
) -> dict[str, Any]:
    """The report's `readiness` section for a classification distillation."""
    n = len(class_names)
    s_pred, t_pred = student_out.argmax(1), teacher_out.argmax(1)
    s_acc, t_acc = per_class_accuracy(s_pred, y, n), per_class_accuracy(t_pred, y, n)
    per_class = [
        {
            "class": name,
            "teacher": t,
            "student": s,
            "drop": None if s is None or t is None else round(t - s, 6),
            "samples": int((y == c).sum()),
        }
        for c, (name, s, t) in enumerate(zip(class_names, s_acc, t_acc, strict=True))
    ]
    drops = [(row["drop"], row["class"]) for row in per_class if row["drop"] is not None]
    worst = max(drops, key=lambda d: d[0], default=None)
    return {
        "per_class": per_class,
        "largest_class_drop": {"class": worst[1], "drop": worst[0]} if worst else None,
        "ece": {
            "teacher": expected_calibration_error(teacher_out, y),
            "student": expected_calibration_error(student_out, y),
        },
        "agreement": float((s_pred == t_pred).float().mean()),
        "confusions_introduced": introduced_confusions(s_pred, t_pred, y, class_names),
    }


def _check(value: float | None, limit: float, at_most: bool) -> dict[str, Any]:
    passed = value is not None and (value <= limit if at_most else value >= limit)
    return {"value": value, "limit": limit, "passed": passed}


def evaluate_gate(gate: GateSpec, report: dict[str, Any]) -> dict[str, Any]:
    """The verdict, check by check, for the limits the gate sets (the others are not
    checked). A value the report lacks fails its check rather than passing silently."""
    checks: dict[str, dict[str, Any]] = {}
    student, teacher = report.get("student") or {}, report.get("teacher") or {}
    ready = report.get("readiness") or {}
    if gate.max_accuracy_drop is not None:
        drop = None
        if "accuracy" in student and "accuracy" in teacher:
            drop = round(teacher["accuracy"] - student["accuracy"], 6)
        checks["accuracy_drop"] = _check(drop, gate.max_accuracy_drop, at_most=True)
    if gate.max_class_drop is not None:
        worst = ready.get("largest_class_drop") or {}
        checks["class_drop"] = _check(worst.get("drop"), gate.max_class_drop, at_most=True)
        checks["class_drop"]["class"] = worst.get("class")
    if gate.max_latency_ms_batch1 is not None:
        latency = student.get("latency_ms_batch1")
        checks["latency_ms_batch1"] = _check(latency, gate.max_latency_ms_batch1, at_most=True)
        window = (report.get("latency") or {}).get("batch1") or {}
        if window.get("noisy"):  # not believed either way: it does not pass, and says why
            checks["latency_ms_batch1"].update(passed=False, noisy=True, why=window.get("why"))
    if gate.min_agreement is not None:
        checks["agreement"] = _check(report.get("agreement"), gate.min_agreement, at_most=False)
    if gate.min_kd_gain is not None:
        checks["kd_gain"] = _check(report.get("kd_gain"), gate.min_kd_gain, at_most=False)
        checks["kd_gain"]["unit"] = report.get("kd_gain_unit")
    return {"passed": all(c["passed"] for c in checks.values()), "checks": checks}
