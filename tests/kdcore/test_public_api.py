"""kdcore's documented names stay what the docs say after any module is imported.

A submodule named like an exported function replaces it on import (Python sets the
package's attribute to the module): `kdcore.run` was both, and after `import kdcore.run`
the documented `kdcore.run(spec, "out")` raised "'module' object is not callable"."""

from __future__ import annotations

import json
import pkgutil
import random
import subprocess
import sys
from pathlib import Path

import pytest

import kdcore
from tests.support.specs import tiny_job

ROOT = Path(__file__).resolve().parents[2]
# the calls README.md and docs/kdcore.md tell users to make, and the names they import
DOCUMENTED_CALLS = ("run", "distill", "train", "parse_spec")
DOCUMENTED_CLASSES = ("JobSpec", "Callbacks", "Progress", "KDError", "SpecError", "DataError")


def kdcore_modules() -> list[str]:
    return sorted(info.name for info in pkgutil.walk_packages(kdcore.__path__, prefix="kdcore."))


PROBE = """
import importlib, inspect, json, sys
order = json.loads(sys.argv[1])
import kdcore
failures = {}
for name in order:
    importlib.import_module(name)
for name in kdcore.__all__:
    value = getattr(kdcore, name)
    if inspect.ismodule(value) or not callable(value):
        failures[name] = type(value).__name__
print(json.dumps(failures))
"""


def test_no_module_shares_a_name_with_an_export():
    """The cause, named: kdcore/<export>.py or kdcore/<export>/ would shadow it."""
    top_level = {name.split(".")[1] for name in kdcore_modules()}
    assert set(kdcore.__all__) & top_level == set()


def test_the_documented_names_are_exported():
    assert set(DOCUMENTED_CALLS) | set(DOCUMENTED_CLASSES) <= set(kdcore.__all__)


@pytest.mark.slow
def test_every_export_is_callable_after_every_module_is_imported_in_any_order():
    """Three orders (sorted, reversed, shuffled), each in a fresh interpreter, and
    the entry module first, as `kdcore.distill` used to import it."""
    modules = kdcore_modules()
    assert "kdcore.runs.entry" in modules and len(modules) > 30
    shuffled = modules[:]
    random.Random(0).shuffle(shuffled)
    entry_first = ["kdcore.runs.entry"] + [m for m in modules if m != "kdcore.runs.entry"]
    for order in (modules, modules[::-1], shuffled, entry_first):
        out = subprocess.run(
            [sys.executable, "-c", PROBE, json.dumps(order)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        assert json.loads(out.stdout.strip().splitlines()[-1]) == {}


def test_a_documented_call_runs_after_its_module_was_imported(tmp_path):
    """The issue's reproduction: import the module, then call kdcore.run."""
    code = (
        "import json, sys, kdcore, kdcore.runs.entry, kdcore.runs.distributed, kdcore.runs.sweep\n"
        "report = kdcore.run(json.loads(sys.argv[1]), sys.argv[2])\n"
        "print(report['kind'])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(tiny_job()), str(tmp_path / "out")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "train"
    assert (tmp_path / "out" / "report.json").is_file()


def test_kdcore_stands_in_rooms_with_at_most_15_entries_at_its_top():
    """docs/development.md names the rooms; pyproject's layers contract keeps them."""
    top = sorted(
        p.name
        for p in (ROOT / "kdcore").iterdir()
        if p.name != "__pycache__" and (p.suffix == ".py" or (p / "__init__.py").exists())
    )
    assert len(top) <= 15, top
    rooms = {"io", "losses", "models", "engine", "shipping", "image", "text", "checks", "runs"}
    assert rooms <= set(top)


def test_every_task_of_the_schema_has_a_modality():
    from typing import get_args

    from kdcore.spec import JobSpec
    from kdcore.tasks import MODALITY, Task

    assert set(MODALITY) == set(get_args(Task))
    assert JobSpec.model_fields["task"].annotation is Task
