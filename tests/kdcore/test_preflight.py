"""Teacher preflight (kdcore.image.preflight), in the library: a teacher from a `train` job
brings its image size and statistics; one fed the wrong inputs fails before any
training step, with the figures and the causes; `teacher_check: "warn"` goes on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import kdcore
from kdcore.engine.callbacks import Callbacks, Progress
from kdcore.errors import TeacherCheckError

DIGITS_16 = {"builtin": "digits", "image_size": 16, "max_samples": 600}


class Steps(Callbacks):
    def __init__(self) -> None:
        self.steps = 0

    def on_step(self, progress: Progress) -> None:
        self.steps += 1

    def on_epoch_end(self, progress: Progress) -> None:
        self.steps += 1


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small_cnn trained on digits at 16 px: its student.json records 16 px and the
    training split's statistics."""
    out = tmp_path_factory.mktemp("teacher")
    kdcore.train(
        {
            "name": "teacher",
            "kind": "train",
            "student": {"arch": "small_cnn"},
            "dataset": DIGITS_16,
            "training": {"epochs": 4, "lr": 0.05, "batch_size": 32, "precision": "fp32"},
            "export": ["safetensors", "onnx"],
        },
        out,
    )
    return out / "student.safetensors"


def distill(teacher: Path, dataset: dict[str, Any], **distillation: Any) -> dict[str, Any]:
    return {
        "name": "distill",
        "kind": "distill",
        "teacher": {"arch": "small_cnn", "checkpoint": str(teacher)},
        "student": {"arch": "mlp_small"},
        "dataset": dataset,
        "distillation": {"method": "kd", **distillation},
        "training": {"epochs": 1, "batch_size": 32, "precision": "fp32"},
    }


def test_a_trained_teacher_brings_its_image_size_and_statistics(teacher: Path, tmp_path):
    """The issue's case: a distill job naming a 16 px teacher without repeating the size
    scored it at chance (10.3%). Now it takes the size from student.json."""
    spec = distill(teacher, {"builtin": "digits", "max_samples": 600})
    report = kdcore.distill(spec, tmp_path / "out")
    preflight = report["teacher_preflight"]
    assert preflight["inherited"]["image_size"] == 16
    assert preflight["inherited"]["from"] == "student.json"
    assert len(preflight["inherited"]["mean"]) == 1 and preflight["input_shape"] == [1, 16, 16]
    assert preflight["passed"] is True and preflight["accuracy"] > 0.5
    assert preflight["samples"] > 0 and preflight["chance"] == 0.1


def test_a_teacher_fed_the_wrong_normalisation_fails_before_training(teacher: Path, tmp_path):
    steps = Steps()
    wrong = {**DIGITS_16, "mean": [0.9], "std": [0.01]}
    with pytest.raises(TeacherCheckError) as caught:
        kdcore.distill(distill(teacher, wrong), tmp_path / "out", callbacks=steps)
    message = str(caught.value)
    assert "near chance" in message and "dataset.mean/std" in message
    assert "dataset.image_size" in message and 'teacher_check to "warn"' in message
    assert steps.steps == 0  # not one training step was taken
    assert not (tmp_path / "out" / "report.json").exists()


def test_warn_records_a_failing_preflight_and_goes_on(teacher: Path, tmp_path):
    wrong = {**DIGITS_16, "mean": [0.9], "std": [0.01]}
    report = kdcore.distill(distill(teacher, wrong, teacher_check="warn"), tmp_path / "out")
    preflight = report["teacher_preflight"]
    assert preflight["passed"] is False and preflight["check"] == "warn"
    assert preflight["accuracy"] < preflight["threshold_accuracy"]
    assert preflight["mean"] == pytest.approx([0.9])


def test_a_teacher_without_weights_is_measured_never_failed(tmp_path):
    spec = distill(Path("unused"), DIGITS_16)
    del spec["teacher"]["checkpoint"]
    report = kdcore.distill(spec, tmp_path / "out")
    assert report["teacher_preflight"]["check"] == "warn"
    assert "accuracy" in report["teacher_preflight"]


def test_a_student_json_that_is_a_link_or_oversized_is_not_read(teacher: Path, tmp_path):
    """The recorded preprocessing is taken only from a regular, small student.json."""
    for name, make in (
        ("linked", lambda f: f.symlink_to(teacher.with_name("student.json"))),
        ("huge", lambda f: f.write_text('{"input_shape": [1, 16, 16]' + " " * 2_000_000 + "}")),
    ):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "student.safetensors").write_bytes(teacher.read_bytes())
        make(folder / "student.json")
        spec = distill(folder / "student.safetensors", {"builtin": "digits", "max_samples": 600})
        from kdcore.checks.validate import parse_spec
        from kdcore.image.preflight import inherit_preprocessing

        _, inherited = inherit_preprocessing(parse_spec(spec))
        assert inherited == {}, name


def test_our_onnx_export_carries_its_preprocessing_and_a_distill_job_inherits_it(
    teacher: Path, tmp_path
):
    """student.onnx records its input and statistics in metadata_props (the documented
    kd.* convention): named as an ONNX teacher with no size or statistics in the spec,
    it is fed what it was trained on."""
    from kdcore.models.onnx import read_preprocessing

    graph = teacher.with_name("student.onnx")
    recorded = read_preprocessing(graph)
    stored = __import__("json").loads(teacher.with_name("student.json").read_text())
    assert recorded["input_shape"] == [1, 16, 16]
    assert recorded["normalize"] == stored["normalize"]
    assert recorded.get("class_names") == stored["class_names"]  # digits: none
    spec = distill(graph, {"builtin": "digits", "max_samples": 600})
    spec["teacher"] = {"checkpoint": str(graph)}
    report = kdcore.distill(spec, tmp_path / "out")
    preflight = report["teacher_preflight"]
    assert preflight["inherited"]["from"] == "student.onnx (ONNX metadata)"
    assert preflight["inherited"]["image_size"] == 16
    assert preflight["inherited"]["mean"] == pytest.approx(stored["normalize"]["mean"])
    assert preflight["passed"] is True and preflight["accuracy"] > 0.5


def test_a_teacher_of_other_channels_fails_saying_image_size_cannot_fix_it(teacher: Path, tmp_path):
    steps = Steps()
    colour = {"name": "synthetic", "shape": [3, 16, 16], "num_classes": 10, "num_samples": 300}
    with pytest.raises(TeacherCheckError) as caught:
        kdcore.distill(distill(teacher, colour), tmp_path / "out", callbacks=steps)
    message = str(caught.value)
    assert "1-channel images" in message and "3-channel" in message
    assert "cannot change the channels" in message
    assert steps.steps == 0


def test_an_onnx_teacher_of_other_channels_is_told_image_size_cannot_fix_it():
    from kdcore.models.onnx import OnnxSignature, fit_problem

    sig = OnnxSignature("input", (3, 32, 32), 10, 1000)
    said = fit_problem(sig, (1, 32, 32), 10)
    assert said is not None and "3-channel" in said and "cannot change that" in said
    size = fit_problem(sig, (3, 16, 16), 10)
    assert size is not None and "set dataset.image_size" in size


def test_a_hugging_face_teacher_folder_of_other_channels_is_refused_in_words(tmp_path):
    """A colour ViT folder (config.json num_channels 3) named for grayscale digits: the
    job and validation say the channels differ, not a tensor shape."""
    from kdcore.checks.validate import parse_spec
    from kdcore.image.preflight import teacher_input_notes
    from tests.support import graphs

    folder = graphs.hf_folder(
        tmp_path / "vit.zip", "hf:ViTForImageClassification", graphs.TINY_VIT, 10, (3, 16, 16)
    )
    spec = distill(folder, DIGITS_16)
    spec["teacher"] = {"arch": "hf:ViTForImageClassification", "checkpoint": str(folder)}
    error, _ = teacher_input_notes(parse_spec(spec), 1)
    assert error is not None and "3-channel images (vit.zip (config.json num_channels))" in error
    steps = Steps()
    with pytest.raises(TeacherCheckError, match="cannot change the channels"):
        kdcore.distill(spec, tmp_path / "out", callbacks=steps)
    assert steps.steps == 0


def test_hostile_onnx_metadata_is_ignored_not_trusted(teacher: Path, tmp_path):
    """metadata_props come with an uploaded graph: values that are not JSON, not finite,
    out of range, or of another form are not taken; a graph without them inherits
    nothing (its own input dimensions are checked against the data, not taken)."""
    import json

    import onnx

    from kdcore.models.onnx import read_preprocessing

    graph = onnx.load(str(teacher.with_name("student.onnx")))
    del graph.metadata_props[:]
    plain = tmp_path / "plain.onnx"
    onnx.save(graph, str(plain))
    assert read_preprocessing(plain) == {}
    hostile = {
        "kd.input_shape": json.dumps([1, 100_000, 100_000]),
        "kd.mean": "NaN-not-json",
        "kd.std": json.dumps([0.0]),
        "kd.class_names": json.dumps([{"x": 1}]),
    }
    onnx.helper.set_model_props(graph, hostile)
    bad = tmp_path / "bad.onnx"
    onnx.save(graph, str(bad))
    assert read_preprocessing(bad) == {}
    onnx.helper.set_model_props(graph, {"kd.mean": "[NaN]", "kd.std": "[1e30]"})
    onnx.save(graph, str(bad))
    assert read_preprocessing(bad) == {}
    assert read_preprocessing(teacher) == {}  # not a graph: nothing
