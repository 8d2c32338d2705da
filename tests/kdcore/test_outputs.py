import json

import pytest
import torch

import kdcore
from kdcore.image.export import load_student, onnx_max_abs_error
from kdcore.models import build_model, count_parameters
from tests.support.specs import tiny_spec


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    spec = tiny_spec(
        export=["safetensors", "torchscript", "onnx"],
        baseline=True,
        student={"arch": "small_cnn"},
        teacher={"arch": "small_cnn_wide"},
    )
    report = kdcore.distill(spec, out)
    return out, report


def test_all_output_files_are_written(distilled):
    out, report = distilled
    for name in (
        "student.safetensors",
        "student.json",
        "student.torchscript.pt",
        "student.onnx",
        "report.json",
    ):
        assert (out / name).is_file(), name
    assert json.loads((out / "report.json").read_text()) == report
    assert report["files"]["onnx"]["sha256"] and len(report["files"]["onnx"]["sha256"]) == 64


def test_student_json_rebuilds_the_model_and_exports_agree(distilled):
    out, _ = distilled
    model, config = load_student(out)
    assert config["arch"] == "small_cnn" and config["input_shape"] == [1, 8, 8]
    x = torch.randn(5, 1, 8, 8)
    # our own export, written by this test: the service never loads a client's TorchScript
    scripted = torch.jit.load(str(out / "student.torchscript.pt"))
    with torch.no_grad():
        assert torch.allclose(model(x), scripted(x), atol=1e-5)
    assert onnx_max_abs_error(model, out / "student.onnx", x) < 1e-4


def test_report_figures_are_consistent(distilled):
    _, r = distilled
    s, t = r["student"], r["teacher"]
    data_shape = tuple(r["dataset"]["input_shape"])
    assert s["parameters"] == count_parameters(build_model("small_cnn", 4, data_shape))
    assert t["parameters"] == count_parameters(build_model("small_cnn_wide", 4, data_shape))
    assert r["compression_ratio"] == pytest.approx(t["parameters"] / s["parameters"], rel=1e-3)
    # the report rounds ratios to 3 decimals
    assert r["speedup_batch1"] == pytest.approx(
        t["latency_ms_batch1"] / s["latency_ms_batch1"], rel=1e-2, abs=1e-3
    )
    for key in ("accuracy", "latency_ms_batch1", "latency_ms_batch64", "bytes_on_disk"):
        assert key in s and key in t
    assert 0 <= r["agreement"] <= 1 and 0 <= s["accuracy"] <= 1
    assert r["train_images_per_s"] > 0 and r["training_time_s"] > 0
    assert s["bytes_on_disk"] == r["files"]["safetensors"]["bytes"]
    # KD gain in percentage points of test accuracy, and the verdict that matches its sign
    assert r["kd_gain_unit"] == "points"
    assert r["kd_gain"] == pytest.approx(
        100 * (s["accuracy"] - r["baseline"]["accuracy"]), abs=1e-3
    )
    assert r["kd_helped"] is (r["kd_gain"] > 0)
    # the baseline's own curve, epoch by epoch (curves.png draws it beside the student's)
    assert [h["epoch"] for h in r["baseline"]["history"]] == list(range(1, r["epochs"] + 1))
    assert ("worse" in r["kd_verdict"]) is (r["kd_gain"] < 0)
    assert r["onnx_max_abs_error"] < 1e-3


def test_train_job_output_is_usable_as_a_teacher(tmp_path):
    teacher_spec = tiny_spec(kind="train", teacher=None, student={"arch": "small_cnn"})
    kdcore.train(teacher_spec, tmp_path / "teacher")
    spec = tiny_spec(
        teacher={
            "arch": "small_cnn",
            "checkpoint": str(tmp_path / "teacher" / "student.safetensors"),
        }
    )
    report = kdcore.distill(spec, tmp_path / "student")
    trained = json.loads((tmp_path / "teacher" / "report.json").read_text())
    assert report["teacher"]["accuracy"] == pytest.approx(trained["student"]["accuracy"])


def test_curves_png_and_per_epoch_loss_terms(distilled):
    out, report = distilled
    png = out / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["files"]["curves"]["name"] == "curves.png"
    assert report["files"]["curves"]["bytes"] == png.stat().st_size
    from PIL import Image

    with Image.open(png) as image:
        assert image.size == (1000, 400)
    history = report["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    for h in history:
        # epoch means of the loss terms the step loop read back: the KD terms are there
        assert {"loss", "ce", "kd"} <= set(h["train_losses"])
        assert h["train_losses"]["loss"] == pytest.approx(
            0.5 * h["train_losses"]["ce"] + 0.5 * h["train_losses"]["kd"], rel=1e-4
        )
