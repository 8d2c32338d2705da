"""What distillation bought: the distilled student against the same student trained
without a teacher (spec `baseline: true`), in one unit per task, and said plainly when
the teacher made it worse.

Units (the report's `kd_gain_unit`; the gate's `min_kd_gain` is in the same one):
- `points`: accuracy, in percentage points (student - baseline); > 0 helped;
- `perplexity_ratio`: baseline perplexity / student perplexity; > 1 helped;
- `mse_ratio`: baseline MSE / student MSE (regression); > 1 helped.

The ratios are unit-free, so a threshold means the same on any scale of target.
"""

from __future__ import annotations

from typing import Any

UNITS = {"accuracy": "points", "perplexity": "perplexity_ratio", "mse": "mse_ratio"}
NEUTRAL = {"points": 0.0, "perplexity_ratio": 1.0, "mse_ratio": 1.0}  # no gain, no loss


def quality_key(figures: dict[str, Any]) -> str | None:
    """The figure a model is judged by: accuracy, perplexity or MSE (the first present)."""
    return next((k for k in UNITS if isinstance(figures.get(k), int | float)), None)


def compare(student: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    """The report's KD-gain fields: `kd_gain` (in `kd_gain_unit`), `kd_helped` and
    `kd_verdict`, one sentence that every surface shows as written."""
    key = quality_key(student)
    if key is None or not isinstance(baseline.get(key), int | float):
        return {}
    s, b = float(student[key]), float(baseline[key])
    unit = UNITS[key]
    if unit == "points":
        gain = round(100 * (s - b), 4)
        figures = f"{100 * s:.2f}% against {100 * b:.2f}% without a teacher"
        amount = f"{gain:+.2f} points"
    else:  # lower is better: the baseline's figure over the student's
        gain = round(b / s, 4) if s > 0 else float("inf")
        figures = f"{key} {s:.4g} against {b:.4g} without a teacher"
        amount = f"{gain:.3f}x"
    helped = gain > NEUTRAL[unit]
    if helped:
        verdict = f"Distillation helped: {figures} ({amount})."
    elif gain == NEUTRAL[unit]:
        verdict = f"Distillation made no difference: {figures} ({amount})."
    else:
        verdict = (
            f"Distillation made the student worse: {figures} ({amount}). "
            "The same student trained without the teacher is the better model."
        )
    return {"kd_gain": gain, "kd_gain_unit": unit, "kd_helped": helped, "kd_verdict": verdict}
