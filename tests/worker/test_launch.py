"""worker.launch: a training in a process of its own and one in a thread of the worker
tell the supervisor the same things, and both stop when asked."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.support.specs import tiny_job
from worker.launch import Child, launch


def _start(how: str, tmp_path: Path, spec: dict[str, Any]) -> tuple[Child, int]:
    payload = {
        "spec": spec,
        "out_dir": str(tmp_path / how),
        "resume_from": None,
        "threads": 1,
        "teacher_cache": None,
    }
    lock_fd = os.open(tmp_path / f"{how}.lock", os.O_RDWR | os.O_CREAT)
    with open(tmp_path / f"{how}.log", "ab") as log_file:
        return launch(how, payload, log_file, lock_fd), lock_fd


def _messages(child: Child) -> list[dict[str, Any]]:
    return [json.loads(line) for line in child.stdout]


@pytest.mark.integration  # one real training process
def test_a_thread_and_a_process_report_the_same_run(tmp_path):
    runs = {}
    for how in ("process", "thread"):
        child, lock_fd = _start(how, tmp_path, tiny_job(training={"epochs": 3}))
        runs[how] = (_messages(child), child.exit_code())
        os.close(lock_fd)
    (p_msgs, p_code), (t_msgs, t_code) = runs["process"], runs["thread"]
    assert p_code == t_code == 0
    assert [m["type"] for m in p_msgs] == [m["type"] for m in t_msgs]
    assert t_msgs[-1]["type"] == "done"
    epochs = [[m["epoch"] for m in msgs if m["type"] == "epoch"] for msgs in (p_msgs, t_msgs)]
    assert epochs == [[1, 2, 3], [1, 2, 3]]
    p_report, t_report = p_msgs[-1]["report"], t_msgs[-1]["report"]
    assert (
        p_report["steps"] == t_report["steps"]
        and p_report["files"].keys() == t_report["files"].keys()
    )
    assert (tmp_path / "thread" / "report.json").exists()


def test_a_training_thread_stops_between_steps_when_asked(tmp_path):
    spec = tiny_job(training={"epochs": 500, "batch_size": 8, "precision": "fp32"})
    child, lock_fd = _start("thread", tmp_path, spec)
    first = json.loads(child.stdout.readline())  # it trains
    assert first["type"] in {"progress", "epoch", "checkpoint"}
    assert child.poll() is None
    child.stop()
    rest = [json.loads(line) for line in child.stdout]
    assert rest[-1] == {"type": "cancelled"} and child.exit_code() == 0
    assert list((tmp_path / "thread" / "checkpoints").glob("interrupted-step*.pt"))
    os.close(lock_fd)


def test_a_failing_training_thread_reports_why(tmp_path):
    spec = tiny_job(training={"epochs": 3, "lr": 100.0, "momentum": 0.99, "precision": "fp32"})
    child, lock_fd = _start("thread", tmp_path, spec)
    last = _messages(child)[-1]
    assert last["type"] == "error" and last["kind"] == "crash"
    assert "FloatingPointError" in last["message"] and child.exit_code() == 1
    os.close(lock_fd)
