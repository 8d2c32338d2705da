"""A sweep: several full trainings of one job (spec `sweep`), one after another in
this process, or `resources.gpus` at once (kdcore.runs.sweep_parallel); the job's outputs
are the best trial's.

    out_dir/trials/NNN/            each trial's own outputs and checkpoints
    out_dir/sweep/state.json       the finished trials (what a resumed sweep skips)
    out_dir/pareto.png             test quality against batch-1 latency, every trial
    out_dir/student.*, report.json the best trial's outputs; the report's `sweep`

A trial whose student breaks a constraint (parameters, CPU latency at batch 1, measured
as the report measures it, once per distinct student) is recorded and never selected;
it is checked before training, so no time is spent on it. Trials share
the teacher's outputs through the teacher cache (kdcore.image.teacher_cache), computed by the
first trial that needs them. The best trial is chosen on the validation split (the test
split only when there is none), so the test figures stay a fair estimate.

Resume: state.json lists the finished trials; the trial in progress resumes from the
checkpoint the caller gives (the service: the job's newest) when that checkpoint is the
trial's, else from the newest in its own folder.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdcore.checks.sweep_plan import configurations, rungs, trial_dict
from kdcore.checks.validate import parse_spec
from kdcore.engine.callbacks import Callbacks, Progress
from kdcore.engine.device import pick_device
from kdcore.engine.resume import training_identity
from kdcore.errors import CheckpointError, SpecError
from kdcore.image.data import DataSplits, load_job_data
from kdcore.image.report import cpu_latency_ms
from kdcore.image.run import build_role, resume_state, run_local, train_baseline
from kdcore.io.checkpoints import atomic_write
from kdcore.models import count_parameters
from kdcore.runs.sweep_parallel import TrialRun, run_at_once
from kdcore.shipping import kd_gain
from kdcore.shipping.outputs import write_report
from kdcore.shipping.plots import plot_pareto
from kdcore.shipping.readiness import evaluate_gate
from kdcore.spec import JobSpec, SweepValue

STATE_FILE = Path("sweep") / "state.json"


@dataclass
class _Sweep:
    spec: JobSpec
    out_dir: Path
    callbacks: Callbacks
    resume_from: str | Path | None
    keep_checkpoints: int | None
    teacher_cache: Path
    data: DataSplits  # for the constraint check before training
    metric: str  # "accuracy" or "mse"
    planned: int  # trials that train (the excluded not counted; halving: if rungs fill)
    records: list[dict[str, Any]] = field(default_factory=list)
    measured: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)  # per student
    live: dict[int, int] = field(default_factory=dict)  # running trial -> its step

    @property
    def slots(self) -> int:
        """Trials at once: one per device (resources.gpus)."""
        return self.spec.resources.gpus

    @property
    def higher_is_better(self) -> bool:
        return self.metric == "accuracy"

    def rank(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Eligible trained trials, best first."""
        ok = [r for r in records if r["status"] == "trained" and not r["excluded_by"]]
        sign = -1 if self.higher_is_better else 1
        return sorted(ok, key=lambda r: (sign * r["score"], r["trial"]))


class _TrialCallbacks(Callbacks):
    """The caller's callbacks, told which trial runs. Steps count over the whole sweep
    (finished trials' steps + every running trial's latest), so a service's
    step-ordered checkpoints and progress stay monotonic, trials at once included."""

    def __init__(self, sweep: _Sweep, info: dict[str, Any], epochs_after: int):
        self.sweep, self.info, self.epochs_after = sweep, info, epochs_after

    def _sweepwide(self, p: Progress) -> Progress:
        live = self.sweep.live
        live[self.info["index"]] = p.step
        per_epoch = p.total_steps / max(1, p.epochs)
        others = sum(r.get("steps", 0) for r in self.sweep.records) + sum(live.values())
        p.trial = self.info
        p.step = others
        p.total_steps = others - live[self.info["index"]] + p.total_steps
        p.total_steps += round(per_epoch * self.epochs_after)
        return p

    def on_step(self, progress: Progress) -> None:
        self.sweep.callbacks.on_step(self._sweepwide(progress))

    def on_epoch_end(self, progress: Progress) -> None:
        self.sweep.callbacks.on_epoch_end(self._sweepwide(progress))

    def on_checkpoint(self, path: Path, progress: Progress) -> None:
        self.sweep.callbacks.on_checkpoint(path, self._sweepwide(progress))

    def should_stop(self) -> bool:
        return self.sweep.callbacks.should_stop()


def run_sweep(
    spec: JobSpec,
    out_dir: Path,
    callbacks: Callbacks | None,
    resume_from: str | Path | None,
    keep_checkpoints: int | None,
    teacher_cache: Path | None,
) -> dict[str, Any]:
    assert spec.sweep is not None
    configs = configurations(spec)
    plan = rungs(spec, len(configs))
    data = load_job_data(spec)
    metric = spec.sweep.metric or ("mse" if spec.task == "regression" else "accuracy")
    sweep = _Sweep(
        spec,
        out_dir,
        callbacks or Callbacks(),
        resume_from,
        keep_checkpoints,
        teacher_cache or out_dir / "sweep" / "teacher-cache",
        data,
        metric,
        planned=sum(r.keep for r in plan),
        records=_load_state(out_dir, spec),
    )
    survivors, index = list(range(len(configs))), 0
    for r, rung in enumerate(plan):
        if r > 0:  # successive halving: the best of the last rung go on
            last = [rec for rec in sweep.records if rec["rung"] == r - 1]
            survivors = [rec["config"] for rec in sweep.rank(last)[: rung.keep]]
        done = {rec["trial"] for rec in sweep.records}  # finished before a crash
        todo = [(i, configs[c], c) for i, c in enumerate(survivors, index) if i not in done]
        index += len(survivors)
        trials = _measured(sweep, todo, r, rung.epochs)
        runnable = sum(not record["excluded_by"] for _, record in trials)
        # progress counts only trials that train: the excluded ones are out of every count
        excluded = (
            len(trials)
            - runnable
            + sum(rec["status"] == "excluded" and rec["rung"] == r for rec in sweep.records)
        )
        later = [(x.epochs, min(x.keep, len(survivors) - excluded)) for x in plan[r + 1 :]]
        trained = sum(rec["status"] == "trained" for rec in sweep.records)
        sweep.planned = trained + runnable + sum(keep for _, keep in later)
        _run_rung(sweep, trials, sum(epochs * keep for epochs, keep in later))
    report = _finish(sweep)
    if teacher_cache is None:
        shutil.rmtree(sweep.teacher_cache, ignore_errors=True)
    return report


def _load_state(out_dir: Path, spec: JobSpec) -> list[dict[str, Any]]:
    path = out_dir / STATE_FILE
    if not path.is_file():
        return []
    try:
        state = json.loads(path.read_text())
        if state["sweep_spec"] != training_identity(spec.model_dump(mode="json")):
            return []  # another sweep's folder: start over
        return list(state["trials"])
    except (ValueError, KeyError, TypeError):  # unreadable: the trials run again
        return []


def _save_state(sweep: _Sweep) -> None:
    identity = training_identity(sweep.spec.model_dump(mode="json"))  # paths may move
    state = {"sweep_spec": identity, "trials": sweep.records}
    blob = json.dumps(state, indent=1).encode()
    (sweep.out_dir / STATE_FILE).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(sweep.out_dir / STATE_FILE, lambda fh: fh.write(blob))


LATENCY_RETRIES = 2  # a noisy measurement of a trial's student is taken again this often
LATENCY_RETRY_PAUSE_S = 0.5


def _violations(sweep: _Sweep, parameters: int, latency: dict[str, Any]) -> list[str]:
    """The limits a trial's student breaks; a latency excluded on a noisy measurement
    says so (kdcore.shipping.latency)."""
    limits = sweep.spec.sweep.constraints  # type: ignore[union-attr]
    out = []
    if limits.max_parameters is not None and parameters > limits.max_parameters:
        out.append(f"parameters {parameters} > {limits.max_parameters}")
    ms = latency["median_ms"]
    if limits.max_latency_ms_batch1 is not None and ms > limits.max_latency_ms_batch1:
        noisy = f" (a noisy measurement: {latency['why']})" if latency["noisy"] else ""
        out.append(f"latency_ms_batch1 {ms:.4g} > {limits.max_latency_ms_batch1}{noisy}")
    return out


def _measure_student(sweep: _Sweep, trial: JobSpec) -> tuple[int, dict[str, Any]]:
    """(parameters, CPU latency at batch 1) of the trial's student, measured once per
    distinct student in the sweep: training does not change either, and one figure per
    architecture keeps a noisy timer from excluding one trial and passing its twin."""
    key = json.dumps(trial.student.model_dump(mode="json"), sort_keys=True)
    if key not in sweep.measured:
        student, _ = build_role(trial.student, "student", sweep.data)
        latency = cpu_latency_ms(student, sweep.data.input_shape, 1)
        for _ in range(LATENCY_RETRIES):  # a load that passes: measured again, the
            if not latency["noisy"]:  # quickest window kept (load only adds time)
                break
            time.sleep(LATENCY_RETRY_PAUSE_S)
            again = cpu_latency_ms(student, sweep.data.input_shape, 1)
            latency = min(latency, again, key=lambda m: (m["noisy"], m["median_ms"]))
        sweep.measured[key] = (count_parameters(student), latency)
    return sweep.measured[key]


def _trial_resume(sweep: _Sweep, trial: JobSpec, folder: Path) -> Path | None:
    """The caller's checkpoint if this trial wrote it, else the trial's newest."""
    candidates = [Path(sweep.resume_from)] if sweep.resume_from else []
    candidates += sorted(
        (folder / "checkpoints").glob("epoch*.pt"),
        key=lambda p: int(p.stem.removeprefix("epoch") or 0),
        reverse=True,
    )
    for path in candidates:
        try:
            resume_state(trial, path)
            return path
        except (CheckpointError, OSError, ValueError):
            continue
    return None


def _measured(
    sweep: _Sweep, todo: list[tuple], rung: int, epochs: int
) -> list[tuple[JobSpec, dict[str, Any]]]:
    """Each trial's spec and record, in index order; a trial whose architecture alone
    breaks a limit is marked excluded (never trained; recorded in its turn)."""
    trials = []
    for index, params, config in todo:
        trial = parse_spec(trial_dict(sweep.spec, index, params, epochs))
        folder = sweep.out_dir / "trials" / f"{index:03d}"
        record = _record(sweep, trial, index, params, config, rung, epochs, folder)
        if record["excluded_by"]:
            record.update(status="excluded", score=None, epochs_run=0)
            record[sweep.metric] = None
        trials.append((trial, record))
    return trials


def _run_rung(
    sweep: _Sweep, trials: list[tuple[JobSpec, dict[str, Any]]], epochs_later: int
) -> None:
    """Record the excluded trials and train the others, in index order, one after
    another; or `slots` at once (sweep_parallel), the excluded ones recorded first."""
    runs = []
    left = sum(not record["excluded_by"] for _, record in trials)
    for trial, record in trials:
        if record["excluded_by"]:
            _recorded(sweep, record)
            continue
        left -= 1
        index, folder = record["trial"], sweep.out_dir / record["folder"]
        after = record["epochs"] * left + epochs_later
        info = {"index": index, "of": sweep.planned, "rung": record["rung"]}
        callbacks = _TrialCallbacks(sweep, {**info, "params": record["params"]}, after)
        run = TrialRun(index, trial, folder, _trial_resume(sweep, trial, folder), callbacks)
        if sweep.slots > 1:
            runs.append((run, record))
            continue
        run_local(
            run.spec, run.folder, callbacks, run.resume, sweep.keep_checkpoints, sweep.teacher_cache
        )
        _trained(sweep, record)
    if runs:
        records = {run.index: record for run, record in runs}
        run_at_once(
            [run for run, _ in runs],
            sweep.slots,
            sweep.keep_checkpoints,
            sweep.teacher_cache,
            sweep.callbacks.should_stop,
            lambda run: _trained(sweep, records[run.index]),
        )


def _record(
    sweep: _Sweep,
    trial: JobSpec,
    index: int,
    params: dict[str, SweepValue],
    config: int,
    rung: int,
    epochs: int,
    folder: Path,
) -> dict[str, Any]:
    parameters, latency = _measure_student(sweep, trial)
    record = {
        "trial": index,
        "config": config,
        "rung": rung,
        "params": params,
        "epochs": epochs,
        "folder": folder.relative_to(sweep.out_dir).as_posix(),
        "latency_ms_batch1": latency["median_ms"],
        "latency_iqr_ms": latency["iqr_ms"],
        "latency_noisy": latency["noisy"],
        "parameters": parameters,
        "excluded_by": _violations(sweep, parameters, latency),
    }
    limit = sweep.spec.sweep.constraints.max_latency_ms_batch1  # type: ignore[union-attr]
    if latency["noisy"] and limit is not None and not record["excluded_by"]:
        record["note"] = f"within the latency limit on a noisy measurement: {latency['why']}"
    return record


def _trained(sweep: _Sweep, record: dict[str, Any]) -> None:
    """A trial finished training: its figures from the report it wrote."""
    report = json.loads((sweep.out_dir / record["folder"] / "report.json").read_text())
    sweep.live.pop(record["trial"], None)
    record.update(
        status="trained",
        score=_validation_score(report, sweep.metric),
        epochs_run=len(report["history"]),
        steps=report["steps"],
        selected_epoch=report.get("selected_epoch"),
    )
    record[sweep.metric] = report["student"].get(sweep.metric)
    _recorded(sweep, record)


def _recorded(sweep: _Sweep, record: dict[str, Any]) -> None:
    sweep.records.append(record)
    sweep.records.sort(key=lambda r: r["trial"])
    _save_state(sweep)
    sweep.callbacks.on_trial_end(record)


def _validation_score(report: dict[str, Any], metric: str) -> float:
    """The selected epoch's validation metric; the test metric without a validation split."""
    history = report["history"]
    epoch = report.get("selected_epoch") or len(history)
    value = history[epoch - 1].get(metric) if history else None
    return float(value if value is not None else report["student"][metric])


def pareto_front(trials: list[dict[str, Any]], metric: str) -> list[int]:
    """Trials no other beats on both test quality and batch-1 latency."""
    better = (lambda a, b: a >= b) if metric == "accuracy" else (lambda a, b: a <= b)
    done = [t for t in trials if t["status"] == "trained" and not t["excluded_by"]]
    front = []
    for t in done:
        dominated = any(
            o is not t
            and better(o[metric], t[metric])
            and o["latency_ms_batch1"] <= t["latency_ms_batch1"]
            and (o[metric] != t[metric] or o["latency_ms_batch1"] != t["latency_ms_batch1"])
            for o in done
        )
        if not dominated:
            front.append(t["trial"])
    return front


def _finish(sweep: _Sweep) -> dict[str, Any]:
    """The best trial's outputs become the job's, with the sweep section and plot."""
    spec = sweep.spec
    final_rung = max((r["rung"] for r in sweep.records), default=0)
    ranked = sweep.rank([r for r in sweep.records if r["rung"] == final_rung])
    if not ranked:
        raise SpecError(
            [("/sweep/constraints", "no trial met the constraints: " + _summary(sweep.records))]
        )
    best = ranked[0]
    trial = parse_spec(trial_dict(spec, best["trial"], best["params"], best["epochs"]))
    folder = sweep.out_dir / best["folder"]
    if not (folder / "report.json").is_file():  # finished on another host: train it again
        run_local(trial, folder, None, None, sweep.keep_checkpoints, sweep.teacher_cache)
    report = json.loads((folder / "report.json").read_text())
    files = {}
    for fmt, entry in report.pop("files").items():
        files[fmt] = sweep.out_dir / entry["name"]
        shutil.copy2(folder / entry["name"], files[fmt])
    report["name"] = spec.name
    constraints = spec.sweep.constraints  # type: ignore[union-attr]
    front = pareto_front(sweep.records, sweep.metric)
    report["sweep"] = {
        "strategy": spec.sweep.strategy,  # type: ignore[union-attr]
        "metric": sweep.metric,
        "selected_on": "validation" if spec.dataset.val_fraction > 0 else "test",
        "constraints": constraints.model_dump(exclude_none=True),
        "rungs": [vars(r) for r in rungs(spec, len(configurations(spec)))],
        "trials": sweep.records,
        "best": best["trial"],
        "pareto": front,
    }
    files["pareto"] = plot_pareto(
        sweep.records,
        front,
        best["trial"],
        sweep.metric,
        constraints.max_latency_ms_batch1,
        sweep.out_dir / "pareto.png",
        f"{spec.name}: {len(sweep.records)} trials",
    )
    if spec.baseline and spec.kind == "distill":
        device = pick_device(spec.training.device)
        data = load_job_data(trial)
        report["baseline"] = train_baseline(trial, data, device, sweep.callbacks)
        report.update(kd_gain.compare(report["student"], report["baseline"]))
        if spec.gate is not None:  # the trial's gate had no baseline to read
            report["gate"] = evaluate_gate(spec.gate, report)
    write_report(report, files, sweep.out_dir)
    return report


def _summary(records: list[dict[str, Any]]) -> str:
    return "; ".join(f"trial {r['trial']}: {', '.join(r['excluded_by'])}" for r in records)
