"""How `kd` shows a sweep's trials as they finish and a readiness gate (kdservice.cli.render),
on a plain (non-terminal) console: what a log or a pipe receives."""

from __future__ import annotations

import io

from rich.console import Console

from kdservice.cli.render import Watcher, gate_table, sweep_lines
from kdservice.client.models import Event

TRIALS = [
    {
        "trial": 0,
        "rung": 0,
        "params": {"student.arch": "mlp_small"},
        "status": "trained",
        "excluded_by": [],
        "accuracy": 0.91,
        "latency_ms_batch1": 0.07,
        "parameters": 6570,
        "epochs": 3,
        "epochs_run": 3,
    },
    {
        "trial": 1,
        "rung": 0,
        "params": {"student.arch": "cifar_resnet8"},
        "status": "excluded",
        "excluded_by": ["parameters 77754 > 50000"],
        "accuracy": None,
        "latency_ms_batch1": 0.9,
        "parameters": 77754,
        "epochs": 3,
        "epochs_run": 0,
    },
]


def _console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=200, color_system=None, force_terminal=False), out


def test_the_trial_table_fills_in_a_row_per_trial_event():
    console, out = _console()
    with Watcher(console) as watch:
        for seq, trial in enumerate(TRIALS, 1):
            watch(Event(seq=seq, type="trial", data=trial))
            rows = [ln for ln in out.getvalue().splitlines() if ln.strip()]
            assert len(rows) == 1 + seq  # the header once, then one row per trial so far
    header, first, second = out.getvalue().splitlines()
    assert header.startswith("trial rung")
    assert "arch=mlp_small" in first and "91.00%" in first and "6,570" in first
    assert "excluded: parameters 77754 > 50000" in second and "0/3" in second


def test_show_prints_the_gate_and_the_finished_sweep():
    console, out = _console()
    gate = {
        "passed": False,
        "checks": {
            "class_drop": {"value": 0.2, "limit": 0.05, "passed": False, "class": "cat"},
            "agreement": {"value": 0.98, "limit": 0.97, "passed": True},
        },
    }
    console.print(gate_table(gate))
    for line in sweep_lines(
        {"strategy": "grid", "metric": "accuracy", "trials": TRIALS, "best": 0, "pareto": [0]}
    ):
        console.print(line)
    text = out.getvalue()
    assert "gate: failed" in text
    assert "class_drop (cat)" in text and "FAIL" in text and "ok" in text
    assert "(Pareto) <- selected" in text


def test_an_epoch_line_shows_a_language_models_perplexity_and_tokens_per_second():
    from kdservice.cli.render import progress_line

    text = progress_line(
        {
            "phase": "train",
            "epoch": 2,
            "epochs": 3,
            "losses": {"loss": 2.5},
            "metrics": {"perplexity": 12.3456, "loss": 2.51},
            "images_per_s": 0.0,
            "tokens_per_s": 4321.0,
        }
    )
    assert "perplexity 12.346" in text and "4321 tokens/s" in text and "img/s" not in text
    image = progress_line({"epoch": 1, "epochs": 1, "metrics": {}, "images_per_s": 99.0})
    assert "99 img/s" in image and "tokens/s" not in image
