"""How `kd` shows a sweep's trials as they finish and a readiness gate (kdservice.cli.render),
on a plain (non-terminal) console: what a log or a pipe receives."""

from __future__ import annotations

import io

from rich.console import Console

from kdservice.cli.render import Watcher, gate_table, sweep_lines
from kdservice.client.models import Event, Job

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


def _epoch(model: str, epoch: int, accuracy: float) -> Event:
    data = {
        "phase": "baseline" if model == "baseline" else "train",
        "model": model,
        "epoch": epoch,
        "epochs": 2,
        "losses": {"loss": 0.5},
        "metrics": {"accuracy": accuracy},
        "images_per_s": 100.0,
    }
    return Event(seq=epoch, type="epoch", data=data)


def test_watch_labels_each_epoch_with_the_model_it_belongs_to():
    console, out = _console()
    with Watcher(console) as watch:
        for event in (
            _epoch("student", 1, 0.90),
            _epoch("student", 2, 0.95),
            _epoch("baseline", 1, 0.80),
            _epoch("baseline", 2, 0.99),
        ):
            watch(event)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("student epoch 1/2") and "acc 90.00%" in lines[0]
    assert lines[1].startswith("student epoch 2/2") and "acc 95.00%" in lines[1]
    assert lines[2].startswith("baseline (no teacher) epoch 1/2") and "acc 80.00%" in lines[2]
    assert lines[3].startswith("baseline (no teacher) epoch 2/2") and "acc 99.00%" in lines[3]


REPORT = {
    "student": {"arch": "small_cnn", "accuracy": 0.9749, "parameters": 24058},
    "teacher": {"arch": "cifar_resnet20", "accuracy": 0.9861, "parameters": 272474},
    "baseline": {"accuracy": 0.9931, "training_time_s": 3.2},
    "kd_gain": -1.82,
    "kd_gain_unit": "points",
    "kd_helped": False,
    "kd_verdict": "Distillation made the student worse: 97.49% against 99.31% without a "
    "teacher (-1.82 points). The same student trained without the teacher is the better model.",
    "exports": {
        "onnx": {
            "runtime": "onnxruntime",
            "accuracy": 0.9749,
            "latency_ms_batch1": 0.05,
            "latency_ms_batch64": 0.9,
            "bytes": 98000,
        },
        "onnx_int8": {
            "runtime": "onnxruntime",
            "accuracy": 0.9721,
            "latency_ms_batch1": 0.04,
            "latency_ms_batch64": 0.8,
            "bytes": 35000,
        },
    },
}


def _finished_job(report: dict) -> Job:
    return Job.model_validate(
        {
            "id": "job_1",
            "name": "kd",
            "kind": "distill",
            "status": "succeeded",
            "attempt": 1,
            "max_attempts": 3,
            "created_at": "2026-12-02T07:00:00Z",
            "started_at": None,
            "finished_at": None,
            "queue_position": None,
            "progress": {"phase": "baseline", "model": "baseline", "epoch": 2, "epochs": 2},
            "metrics": {"accuracy": 0.975},
            "baseline_metrics": {"accuracy": 0.9931},
            "error": None,
            "status_transitions": [],
            "retry_of": None,
            "resume_checkpoint_id": None,
            "spec": {},
            "report": report,
        }
    )


def test_show_keeps_the_students_and_the_baselines_figures_apart():
    from kdservice.cli.render import job_details

    console, out = _console()
    console.print(job_details(_finished_job(REPORT)))
    text = out.getvalue()
    student_row = next(ln for ln in text.splitlines() if ln.startswith("student (val)"))
    baseline_row = next(ln for ln in text.splitlines() if ln.startswith("baseline (val)"))
    assert "accuracy 0.975" in student_row and "0.9931" not in student_row
    assert "accuracy 0.9931" in baseline_row and "without a teacher" in baseline_row
    accuracy_row = next(ln for ln in text.splitlines() if ln.strip().startswith("accuracy "))
    # teacher, student, baseline, in that order
    cells = [c for c in accuracy_row.split() if c != "│"]
    assert cells[1:] == ["98.61%", "97.49%", "99.31%"], accuracy_row
    assert "baseline (no teacher)" in text
    assert "KD gain over scratch -1.82 points" in text
    assert "Distillation made the student worse" in text
    # the export table the README quotes: each format's quality, latency and size
    onnx_int8 = next(ln for ln in text.splitlines() if ln.strip().startswith("onnx_int8"))
    assert "97.21%" in onnx_int8 and "35,000" in onnx_int8


def test_show_without_a_baseline_has_no_baseline_column():
    from kdservice.cli.render import job_details

    console, out = _console()
    plain = {k: v for k, v in REPORT.items() if not k.startswith(("kd_", "baseline"))}
    job = _finished_job(plain).model_copy(update={"baseline_metrics": {}})
    console.print(job_details(job))
    text = out.getvalue()
    assert "baseline" not in text and "KD gain" not in text


def test_a_language_models_report_shows_tokens_per_second_not_image_latency():
    from kdservice.cli.render import report_table

    report = {
        "teacher": {"arch": "hf:GPT2LMHeadModel", "perplexity": 17.89, "tokens_per_s": 51234.4},
        "student": {"arch": "hf:GPT2LMHeadModel", "perplexity": 19.23, "tokens_per_s": 103580.9},
        "baseline": {"perplexity": 21.32},
    }
    console, out = _console()
    console.print(report_table(report))
    text = out.getvalue()
    assert "latency" not in text
    row = next(ln for ln in text.splitlines() if ln.strip().startswith("tokens/s"))
    assert "51,234" in row and "103,581" in row


def test_show_says_a_job_is_generating_while_its_teacher_answers():
    from kdservice.cli.render import job_details

    console, out = _console()
    generating = {"phase": "generate", "stage": "generating", "epoch": 1, "epochs": 1}
    job = _finished_job({}).model_copy(update={"status": "running", "report": None})
    job = job.model_copy(
        update={
            "progress": job.progress.model_copy(update={**generating, "step": 7, "total_steps": 24})
        }
    )
    console.print(job_details(job))
    row = next(ln for ln in out.getvalue().splitlines() if ln.startswith("progress"))
    assert "generating: 7/24 answers of the teacher" in row and "epoch" not in row


def test_a_multi_host_job_shows_its_hosts_their_throughput_and_a_lost_host() -> None:
    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=False)
    placed = {
        "attempt": 1,
        "rendezvous": "10.0.0.1:29400",
        "hosts": [
            {"node_rank": 0, "host": "10.0.0.1", "ranks": [0, 1]},
            {"node_rank": 1, "host": "10.0.0.2", "ranks": [2, 3]},
        ],
    }
    rate = {"node_rank": 1, "host": "10.0.0.2", "epoch": 2, "rate": 812.4, "unit": "images/s"}
    lost = {"attempt": 1, "host": "10.0.0.2", "node_rank": 1}
    with Watcher(console) as watch:
        events = [("hosts", placed), ("host", rate), ("node_lost", lost)]
        for seq, (kind, data) in enumerate(events, 1):
            watch(Event(seq=seq, type=kind, data=data))
    lines = out.getvalue().splitlines()
    assert lines == [
        "attempt 1 on node 0 10.0.0.1 (ranks 0,1), node 1 10.0.0.2 (ranks 2,3)",
        "host 10.0.0.2: epoch 2 812 images/s",
        "lost node 1 (10.0.0.2) in attempt 1",
    ]
