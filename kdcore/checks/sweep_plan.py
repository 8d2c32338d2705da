"""What a sweep will train, without training anything: its configurations (grid or a
seeded random draw), the rungs of successive halving, and each trial's spec dict.
Pure functions of the spec, so a resumed sweep plans exactly what the first attempt
did, and the service can check a sweep before queueing it (kdcore.checks.validate).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kdcore.spec import MAX_TRIALS, JobSpec, SweepValue

ETA = 3  # successive halving: a third of a rung goes on, with 3x its epochs


@dataclass(frozen=True)
class Rung:
    epochs: int  # each trial's training.epochs on this rung
    keep: int  # how many configurations train on it


def combination(parameters: dict[str, list[SweepValue]], i: int) -> dict[str, SweepValue]:
    """The i-th combination of the grid (the last parameter varies fastest), computed
    without listing the grid: 8 parameters of 32 values make 10^12 of them."""
    out: dict[str, SweepValue] = {}
    for key in reversed(parameters):
        i, pick = divmod(i, len(parameters[key]))
        out[key] = parameters[key][pick]
    return {key: out[key] for key in parameters}


def grid_size(parameters: dict[str, list[SweepValue]]) -> int:
    return math.prod(len(v) for v in parameters.values())


def configurations(spec: JobSpec) -> list[dict[str, SweepValue]]:
    """The configurations a sweep starts with, in the order they are trained."""
    sweep = spec.sweep
    assert sweep is not None
    size, limit = grid_size(sweep.parameters), sweep.max_trials or MAX_TRIALS
    if sweep.strategy == "grid":
        if size > limit:  # refused by `problems` before a job gets here
            raise ValueError(f"a grid of {size} trials, over max_trials {limit}")
        picks: Sequence[int] = range(size)
    else:  # a seeded draw of indices: the same on every attempt
        picks = random.Random(spec.training.seed).sample(range(size), min(limit, size))  # noqa: S311
    return [combination(sweep.parameters, i) for i in picks]


def rungs(spec: JobSpec, configs: int) -> list[Rung]:
    """grid/random: one rung at the spec's epochs. halving: rung r of R keeps
    ceil(n / 3^r) configurations with epochs / 3^(R - r) epochs; the last rung trains at
    training.epochs. R = min(ceil(log3 n), floor(log3 epochs)): budgets grow 3x from
    rung to rung, so no rung repeats the last one's training."""
    sweep, epochs = spec.sweep, spec.training.epochs
    assert sweep is not None
    if sweep.strategy != "halving" or configs <= 1:
        return [Rung(epochs, configs)]
    # no more rungs than the epochs allow: each rung's budget is 3x the last one's
    last = min(math.ceil(math.log(configs, ETA) - 1e-9), math.floor(math.log(epochs, ETA) + 1e-9))
    return [
        Rung(max(1, round(epochs / ETA ** (last - r))), math.ceil(configs / ETA**r))
        for r in range(last + 1)
    ]


def set_field(spec: dict[str, Any], dotted: str, value: SweepValue) -> None:
    """spec["a"]["b"] = value for "a.b", creating the dicts on the way."""
    *parents, leaf = dotted.split(".")
    node = spec
    for name in parents:
        child = node.get(name)
        if not isinstance(child, dict):
            child = node[name] = {}
        node = child
    node[leaf] = value


def trial_dict(spec: JobSpec, index: int, params: dict[str, SweepValue], epochs: int) -> dict:
    """A trial's spec: the job's, without the sweep, with `params` set, on one device
    (resources.gpus N runs N trials at once). Its baseline is trained once, for the best
    trial (kdcore.runs.sweep)."""
    trial = spec.model_dump(mode="json", exclude={"sweep"}, exclude_none=True)
    trial["name"] = f"{spec.name[:180]} / trial {index}"
    trial["baseline"] = False
    trial.setdefault("resources", {})["gpus"] = 1  # a trial runs on one device
    trial.setdefault("training", {})["epochs"] = epochs
    for key, value in params.items():
        set_field(trial, key, value)
    return trial


def trial_epochs(spec: JobSpec) -> int:
    """The epochs a sweep trains in all: each rung's trials times its epochs."""
    if spec.sweep is None:
        return spec.training.epochs
    return sum(r.epochs * r.keep for r in rungs(spec, len(configurations(spec))))


def problems(spec: JobSpec) -> list[tuple[str, str]]:
    """(pointer, message) for a sweep that cannot run: too many trials, a metric that does
    not fit the task. Each value's validity is checked by parsing the trial specs
    (kdcore.checks.validate)."""
    sweep = spec.sweep
    if sweep is None:
        return []
    out = []
    size, limit = grid_size(sweep.parameters), sweep.max_trials or MAX_TRIALS
    if sweep.strategy == "grid" and size > limit:
        out.append(
            (
                "/sweep/parameters",
                f"a grid of {size} trials, over max_trials {limit}: "
                "raise max_trials (at most 64) or use strategy random or halving",
            )
        )
    regression = spec.task == "regression"
    if sweep.metric is not None and (sweep.metric == "mse") != regression:
        out.append(("/sweep/metric", f"{sweep.metric} does not fit task {spec.task}"))
    return out
