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
from kdcore.checks.validate import parse_spec, validate_names

pytestmark = pytest.mark.slow
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PAIRS = [
    ("digits_teacher.json", "digits_distill.json", {"image_size": 16, "max_samples": 300}),
    ("fashion_mnist_teacher.json", "fashion_mnist_distill.json", {"max_samples": 300}),
    ("regression_teacher.json", "regression_distill.json", {}),
]
QUICKSTART = ("quickstart_teacher.json", "quickstart_distill.json")  # run as written
SHIP = "quickstart_ship.json"  # a sweep under constraints, a gate, smaller exports
# the language-model first run: through the service in
# tests/doc_snippets/test_language_model_quick_start.py
LANGUAGE_MODEL = ("lm_teacher.json", "lm_distill.json")
ROOT = EXAMPLES.parent


def load(name: str) -> dict:
    return json.loads((EXAMPLES / name).read_text())


def test_every_example_parses_and_is_covered() -> None:
    names = sorted(p.name for p in EXAMPLES.glob("*.json"))
    pairs = [n for pair in PAIRS for n in pair[:2]]
    assert names == sorted([*QUICKSTART, SHIP, *LANGUAGE_MODEL, *pairs])
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
    if spec["kind"] == "distill":  # a teacher of 2 epochs on a sample may be near chance
        spec.setdefault("distillation", {})["teacher_check"] = "warn"
    spec["dataset"].update(dataset)
    if spec["dataset"].get("path"):
        spec["dataset"]["path"] = str(root / spec["dataset"]["path"])
    return spec


@pytest.mark.parametrize("teacher_file,distill_file,dataset", PAIRS, ids=lambda p: str(p)[:14])
def test_example_pair_runs(
    teacher_file: str, distill_file: str, dataset: dict, tmp_path: Path
) -> None:
    teacher = shrink(load(teacher_file), dataset, ROOT)
    kdcore.train(teacher, tmp_path / "teacher")
    distill = shrink(load(distill_file), dataset, ROOT)
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


def test_the_quickstart_runs_as_written_and_leads_the_readme(tmp_path: Path) -> None:
    """The README's first jobs: full epochs, real digits. Its time is measured, not
    asserted (under a minute on 2 cores, README); what must hold is that it teaches."""
    teacher_file, distill_file = QUICKSTART
    teacher = kdcore.train(load(teacher_file), tmp_path / "teacher")
    assert teacher["student"]["accuracy"] > 0.95
    distill = load(distill_file)
    assert distill["teacher"]["checkpoint"] == "out/quickstart-teacher/student.safetensors"
    distill["teacher"]["checkpoint"] = str(tmp_path / "teacher/student.safetensors")
    report = kdcore.distill(distill, tmp_path / "distill")
    assert report["student"]["accuracy"] > 0.9 and "kd_gain" in report
    readme = (ROOT / "README.md").read_text()
    tour = readme[readme.index("## A short tour") :]
    first_submit = next(ln for ln in tour.splitlines() if "kd submit" in ln)
    assert "examples/quickstart_teacher.json" in first_submit


def test_the_shipping_example_sweeps_gates_and_exports(tmp_path: Path) -> None:
    dataset = {"max_samples": 400}
    kdcore.train(shrink(load(QUICKSTART[0]), dataset, ROOT), tmp_path / "teacher")
    ship = shrink(load(SHIP), dataset, ROOT)
    ship["teacher"]["checkpoint"] = str(tmp_path / "teacher/student.safetensors")
    report = kdcore.distill(ship, tmp_path / "ship")
    sweep = report["sweep"]
    assert len(sweep["trials"]) == 9
    excluded = [t for t in sweep["trials"] if t["excluded_by"]]
    assert {t["params"]["student.arch"] for t in excluded} >= {"cifar_resnet8"}  # 77,754 > 60,000
    assert sweep["best"] not in {t["trial"] for t in excluded}
    assert set(report["gate"]["checks"]) == {
        "accuracy_drop",
        "class_drop",
        "latency_ms_batch1",
        "agreement",
    }
    assert set(report["exports"]) == {"onnx", "onnx_fp16", "onnx_int8"}
    assert (tmp_path / "ship/pareto.png").is_file()


def test_the_readmes_onnx_export_snippet_writes_one_file_the_service_accepts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's "Bring your own model" export, run as written with the installed
    torch (which otherwise writes the weights to teacher.onnx.data, refused), on a model
    standing for the user's own: one file, accepted by the upload's check."""
    import re

    import torch
    from torch import nn

    from kdcore.models.onnx import inspect_onnx

    section = (ROOT / "README.md").read_text().split("## Bring your own model", 1)[1]
    snippet = next(
        block for block in re.findall(r"```python\n(.*?)```", section, re.S) if "onnx" in block
    )
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 30 * 30, 10))
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet, "README.md", "exec"), {"model": model, "torch": torch})  # noqa: S102
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher.onnx"]
    signature = inspect_onnx(tmp_path / "teacher.onnx")
    assert (signature.input_shape, signature.outputs) == ((3, 32, 32), 10)
