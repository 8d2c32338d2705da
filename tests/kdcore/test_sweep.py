"""Sweeps (kdcore.runs.sweep, kdcore.checks.sweep_plan): the plan, constraints, halving, the
Pareto front and resume in the middle of a sweep, on small real trainings."""

from __future__ import annotations

import json

import pytest

from kdcore.checks.sweep_plan import Rung, combination, configurations, rungs, set_field
from kdcore.checks.validate import parse_spec
from kdcore.engine.callbacks import Callbacks
from kdcore.errors import Cancelled, SpecError
from kdcore.runs.entry import run
from kdcore.runs.sweep import pareto_front


def _job(**sweep) -> dict:
    return {
        "name": "sweep",
        "kind": "train",
        "student": {"arch": "mlp_small"},
        "dataset": {
            "builtin": "synthetic",
            "num_samples": 240,
            "num_classes": 3,
            "shape": [1, 6, 6],
            "val_fraction": 0.2,
        },
        "training": {"epochs": 3, "batch_size": 32, "precision": "fp32", "lr": 0.05},
        "sweep": sweep,
    }


class Recorder(Callbacks):
    def __init__(self, stop_in_trial: int | None = None, after_steps: int = 0):
        self.trials: list[dict] = []
        self.seen_order: list[tuple[str, int]] = []  # ("step" | "end", trial), as told
        self.running: list[int] = []
        self.steps: list[int] = []
        self.stop_in_trial, self.after_steps, self.seen = stop_in_trial, after_steps, 0

    def on_step(self, p):
        self.running.append(p.trial["index"])
        self.steps.append(p.step)
        self.seen_order.append(("step", p.trial["index"]))

    def on_epoch_end(self, p):
        self.on_step(p)
        if p.trial["index"] == self.stop_in_trial:
            self.seen += 1

    def on_trial_end(self, trial):
        self.trials.append(trial)
        self.seen_order.append(("end", trial["trial"]))

    def should_stop(self):
        return self.stop_in_trial is not None and self.seen >= self.after_steps


def test_plans_grid_random_and_halving_rungs():
    grid = parse_spec(_job(parameters={"training.lr": [0.1, 0.05], "training.momentum": [0, 0.9]}))
    assert len(configurations(grid)) == 4
    assert rungs(grid, 4) == [Rung(3, 4)]
    few_epochs = parse_spec(_job(parameters={"training.lr": [1, 2, 3, 4]}, strategy="halving"))
    assert rungs(few_epochs, 4) == [Rung(1, 4), Rung(3, 2)]  # 3 epochs: two rungs at most
    spec = _job(parameters={"training.lr": [0.1, 0.05, 0.02, 0.01, 0.005]}, strategy="random")
    spec["sweep"]["max_trials"] = 3
    drawn = configurations(parse_spec(spec))
    assert len(drawn) == 3 and len({json.dumps(c) for c in drawn}) == 3
    assert drawn == configurations(parse_spec(spec))  # seeded: a resume plans the same
    halving = parse_spec(
        {
            **_job(parameters={"training.lr": [1, 2, 3, 4, 5, 6, 7, 8, 9]}, strategy="halving"),
            "training": {"epochs": 9},
        }
    )
    assert rungs(halving, 9) == [Rung(1, 9), Rung(3, 3), Rung(9, 1)]


def test_a_random_draw_from_a_huge_grid_lists_only_what_it_draws():
    values = list(range(1, 33))
    keys = [
        "training.seed",
        "training.batch_size",
        "distillation.feature_weight",
        "distillation.alpha",
        "distillation.beta",
        "distillation.temperature",
        "distillation.ce_weight",
        "distillation.kd_weight",
    ]
    spec = _job(parameters=dict.fromkeys(keys, values), strategy="random", max_trials=5)
    drawn = configurations(parse_spec(spec))  # 32^8 = 10^12 combinations: not listed
    assert len(drawn) == 5 and all(set(c) == set(keys) for c in drawn)
    assert combination({"a": [1, 2], "b": [3, 4, 5]}, 4) == {"a": 2, "b": 4}


def test_set_field_creates_the_path():
    spec: dict = {"training": {"lr": 0.1}}
    set_field(spec, "training.lr", 0.5)
    set_field(spec, "augment.flip", True)
    assert spec == {"training": {"lr": 0.5}, "augment": {"flip": True}}


@pytest.mark.parametrize(
    ("sweep", "pointer", "words"),
    [
        ({"parameters": {"name": ["a"]}}, "/sweep/parameters", "dotted field"),
        ({"parameters": {"student.checkpoint": ["/etc/passwd"]}}, "/sweep/parameters", "files"),
        ({"parameters": {"training.lr": [-1.0]}}, "/sweep/parameters/training.lr", "greater"),
        ({"parameters": {"student.arch": ["nope"]}}, "/sweep/parameters/student.arch", "unknown"),
        (
            {"parameters": {"training.lr": list(range(1, 33)), "training.momentum": [0, 0.5, 0.9]}},
            "/sweep/parameters",
            "max_trials",
        ),
        ({"parameters": {"training.lr": [0.1]}, "metric": "mse"}, "/sweep/metric", "does not fit"),
        ({"parameters": {"training.lr": []}}, "/sweep/parameters", "between 1 and 32"),
    ],
)
def test_a_bad_sweep_is_refused_at_its_parameter(sweep, pointer, words):
    with pytest.raises(SpecError) as exc:
        parse_spec(_job(**sweep))
    assert any(p.startswith(pointer) and words in m for p, m in exc.value.errors), exc.value.errors


def test_pareto_front_keeps_only_undominated_trials():
    def t(i, acc, ms, excluded=()):
        return {
            "trial": i,
            "status": "trained",
            "excluded_by": list(excluded),
            "accuracy": acc,
            "latency_ms_batch1": ms,
        }

    trials = [t(0, 0.9, 2.0), t(1, 0.8, 1.0), t(2, 0.85, 2.5), t(3, 0.95, 0.5, ["latency"])]
    assert pareto_front(trials, "accuracy") == [0, 1]


def test_a_constraint_excludes_trials_which_are_never_selected(tmp_path):
    spec = _job(
        parameters={"student.arch": ["mlp_small", "mlp"]},
        constraints={"max_parameters": 5000},
    )
    report = run(spec, tmp_path)
    trials = report["sweep"]["trials"]
    small, big = trials
    assert small["status"] == "trained" and not small["excluded_by"]
    assert big["status"] == "excluded" and big["excluded_by"][0].startswith("parameters")
    assert big["parameters"] > 5000 and big["epochs_run"] == 0
    assert report["sweep"]["best"] == 0 and report["student"]["arch"] == "mlp_small"
    assert (tmp_path / "pareto.png").stat().st_size > 0
    assert json.loads((tmp_path / "report.json").read_text())["files"]["pareto"]["bytes"] > 0


def test_progress_counts_only_the_trials_that_train(tmp_path):
    """An excluded trial is out of every count: the trials say `of` the ones that train,
    and the sweep's steps end at the total they announced (100%, not short of it)."""

    class Totals(Recorder):
        def __init__(self):
            super().__init__()
            self.of: set[int] = set()
            self.last: tuple[int, int] = (0, 0)

        def on_step(self, p):
            super().on_step(p)
            self.of.add(p.trial["of"])
            self.last = (p.step, p.total_steps)

    spec = _job(
        parameters={"student.arch": ["mlp_small", "mlp"], "training.lr": [0.05, 0.1]},
        constraints={"max_parameters": 5000},
    )
    seen = Totals()
    report = run(spec, tmp_path, seen)
    trained = [t for t in report["sweep"]["trials"] if t["status"] == "trained"]
    assert len(trained) == 2 and len(report["sweep"]["trials"]) == 4
    assert seen.of == {2}  # two of four configurations train
    step, total = seen.last
    assert step == total == sum(t["steps"] for t in trained)


def test_every_trial_excluded_is_a_clear_error(tmp_path):
    spec = _job(parameters={"student.arch": ["mlp"]}, constraints={"max_parameters": 10})
    with pytest.raises(SpecError, match="no trial met the constraints"):
        run(spec, tmp_path)


def test_halving_trains_a_third_further_with_more_epochs(tmp_path):
    spec = _job(parameters={"training.lr": [0.2, 0.1, 0.05, 0.01]}, strategy="halving")
    calls = Recorder()
    report = run(spec, tmp_path, calls)
    trials = report["sweep"]["trials"]
    # 4 configurations, 3 epochs: one rung of 1 epoch, the best third (2) on at 3 epochs
    assert [(t["rung"], t["epochs"]) for t in trials] == [(0, 1)] * 4 + [(1, 3)] * 2
    first = sorted(trials[:4], key=lambda t: (-t["score"], t["trial"]))
    assert {t["config"] for t in trials[4:6]} == {t["config"] for t in first[:2]}
    final = max(trials[4:6], key=lambda t: (t["score"], -t["trial"]))
    assert report["sweep"]["best"] == final["trial"] and report["epochs"] == 3
    assert [t["trial"] for t in calls.trials] == list(range(6))
    assert calls.steps == sorted(calls.steps)  # counted over the whole sweep


def test_a_sweep_stopped_mid_trial_resumes_at_that_trial_exactly(tmp_path):
    spec = _job(parameters={"training.lr": [0.1, 0.05, 0.02]})
    whole = run(spec, tmp_path / "whole")
    stopper = Recorder(stop_in_trial=1, after_steps=1)  # at its second epoch's first step
    with pytest.raises(Cancelled):
        run(spec, tmp_path / "cut", stopper)
    assert [t["trial"] for t in stopper.trials] == [0]
    again = Recorder()
    resumed = run(spec, tmp_path / "cut", again)
    assert 0 not in again.running and set(again.running) == {1, 2}  # trial 0 not re-run
    assert [t["trial"] for t in again.trials] == [1, 2]
    key = ("trial", "params", "score", "accuracy", "steps")
    assert [{k: t[k] for k in key} for t in resumed["sweep"]["trials"]] == [
        {k: t[k] for k in key} for t in whole["sweep"]["trials"]
    ]


@pytest.mark.slow
def test_trials_run_several_at_once_with_several_devices(tmp_path, monkeypatch):
    """resources.gpus 2 on the CPU: two trials side by side (each a spawned process
    with half the threads); the records match a one-at-a-time sweep's plan."""
    from kdcore.runs import sweep_parallel

    alive: list[int] = []  # trial processes alive together, after each start round
    fill = sweep_parallel._Pool.fill

    def counting_fill(self, pending):
        fill(self, pending)
        alive.append(sum(process.is_alive() for process, _ in self.running.values()))

    monkeypatch.setattr(sweep_parallel._Pool, "fill", counting_fill)
    spec = _job(parameters={"training.lr": [0.1, 0.05, 0.02]})
    spec["resources"] = {"gpus": 2}
    spec["training"].update(epochs=3)
    calls = Recorder()
    report = run(spec, tmp_path, calls)
    trials = report["sweep"]["trials"]
    assert [t["trial"] for t in trials] == [0, 1, 2]
    assert all(t["status"] == "trained" and t["epochs_run"] == 3 for t in trials)
    assert alive[0] == 2 and max(alive) == 2  # two at once, never more than the slots
    # the third started only when a slot was free: after one of the first two ended
    third_starts = calls.seen_order.index(("step", 2))
    first_end = min(calls.seen_order.index(("end", t)) for t in (0, 1))
    assert first_end < third_starts
    assert calls.steps == sorted(calls.steps)  # still one sweep-wide step count
    assert report["sweep"]["best"] in {0, 1, 2} and (tmp_path / "student.safetensors").is_file()
    assert sorted(t["trial"] for t in calls.trials) == [0, 1, 2]


@pytest.mark.slow
def test_trials_at_once_stop_together_and_resume(tmp_path):
    spec = _job(parameters={"training.lr": [0.1, 0.05, 0.02]})
    spec["resources"] = {"gpus": 2}
    stopper = Recorder(stop_in_trial=1, after_steps=1)
    with pytest.raises(Cancelled):
        run(spec, tmp_path, stopper)
    assert 2 not in stopper.running  # no trial starts once a stop was asked
    again = Recorder()
    resumed = run(spec, tmp_path, again)
    assert [t["trial"] for t in resumed["sweep"]["trials"]] == [0, 1, 2]
    finished_before = {t["trial"] for t in stopper.trials}
    assert not finished_before & {t["trial"] for t in again.trials}  # not trained twice


def test_trials_share_the_teachers_outputs_across_temperatures(tmp_path):
    """The teacher runs for the first trial only: the others, at other temperatures,
    read its stored logits (every class kept, so T does not change them)."""
    spec = _job(parameters={"distillation.temperature": [2, 4, 8]})
    spec.update(kind="distill", teacher={"arch": "mlp_small"})  # random, but a teacher
    report = run(spec, tmp_path)
    stores = [
        json.loads((tmp_path / t["folder"] / "report.json").read_text())["teacher_store"]
        for t in report["sweep"]["trials"]
    ]
    assert stores[0]["computed"] > 0 and stores[0]["from_disk"] == 0
    assert all(s["computed"] == 0 and s["from_disk"] > 0 for s in stores[1:]), stores
    assert len({s["key"] for s in stores}) == 1
    assert not (tmp_path / "sweep" / "teacher-cache").exists()  # its own cache, removed


@pytest.mark.parametrize(
    "state", ["{not json", '{"trials": 3}', '{"sweep_spec": {}, "trials": []}']
)
def test_an_unreadable_or_foreign_state_file_means_every_trial_runs(tmp_path, state):
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "state.json").write_text(state)
    calls = Recorder()
    report = run(_job(parameters={"training.lr": [0.1, 0.05]}), tmp_path, calls)
    assert [t["trial"] for t in calls.trials] == [0, 1]
    assert len(report["sweep"]["trials"]) == 2
