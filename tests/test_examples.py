"""The specs in examples/ are what users copy: each one parses, and each runs end to end
(through kdcore, with fewer epochs and samples) so that none of them can rot. The CLI
test (tests/e2e/test_cli_and_client.py) submits the digits ones to a real service."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

import kdcore
from kdcore.validate import parse_spec, validate_names

pytestmark = pytest.mark.slow
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PAIRS = [
    ("digits_teacher.json", "digits_distill.json", {"image_size": 16, "max_samples": 300}),
    ("fashion_mnist_teacher.json", "fashion_mnist_distill.json", {"max_samples": 300}),
    ("regression_teacher.json", "regression_distill.json", {}),
]


def load(name: str) -> dict:
    return json.loads((EXAMPLES / name).read_text())


def test_every_example_parses_and_is_covered() -> None:
    names = sorted(p.name for p in EXAMPLES.glob("*.json"))
    assert names == sorted(n for pair in PAIRS for n in pair[:2])
    for name in names:
        spec = parse_spec(load(name))
        assert validate_names(spec) == [], name


def test_regression_data_is_what_the_script_makes(tmp_path: Path) -> None:
    script = importlib.util.spec_from_file_location("mk", EXAMPLES / "make_regression_npz.py")
    assert script is not None and script.loader is not None
    module = importlib.util.module_from_spec(script)
    script.loader.exec_module(module)
    fresh = module.make(tmp_path / "r.npz")
    with np.load(fresh) as a, np.load(EXAMPLES / "data/regression.npz") as b:
        assert np.array_equal(a["x"], b["x"]) and np.array_equal(a["y"], b["y"])


def shrink(spec: dict, dataset: dict, root: Path) -> dict:
    spec = copy.deepcopy(spec)
    spec["training"]["epochs"] = 2
    spec["training"].pop("warmup_epochs", None)
    spec["dataset"].update(dataset)
    if spec["dataset"].get("path"):
        spec["dataset"]["path"] = str(root / spec["dataset"]["path"])
    return spec


@pytest.mark.parametrize("teacher_file,distill_file,dataset", PAIRS, ids=lambda p: str(p)[:14])
def test_example_pair_runs(
    teacher_file: str, distill_file: str, dataset: dict, tmp_path: Path
) -> None:
    root = EXAMPLES.parent
    teacher = shrink(load(teacher_file), dataset, root)
    kdcore.train(teacher, tmp_path / "teacher")
    distill = shrink(load(distill_file), dataset, root)
    # the example names the teacher's output path relative to the repository root
    assert distill["teacher"]["checkpoint"].endswith("/student.safetensors")
    distill["teacher"]["checkpoint"] = str(tmp_path / "teacher/student.safetensors")
    report = kdcore.distill(distill, tmp_path / "distill")
    assert report["teacher"]["arch"] == teacher["student"]["arch"]
    assert report["student"]["arch"] == distill["student"]["arch"]
    assert "kd_gain" in report  # every distil example runs the scratch baseline
    assert (tmp_path / "distill/curves.png").is_file()
    for fmt in distill["export"]:
        assert (tmp_path / "distill" / report["files"][fmt]["name"]).is_file()
