"""Admission (kdcore.checks.admit): one call, every problem at its pointer, each file
reference resolved once through the caller's resolver."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import save_file

from kdcore.checks.admit import Purpose, admit
from kdcore.checks.cost import Limits
from kdcore.checks.validate import parse_spec
from kdcore.models import build_model
from tests.support.specs import tiny_spec

LIMITS = Limits(
    max_model_params=10_000_000,
    max_activation_bytes=2**30,
    max_dataset_bytes=2**30,
    max_archive_bytes=2**30,
)


class Files:
    """A resolver over a dict of references, counting each call."""

    def __init__(self, files: dict[str, Path | None]) -> None:
        self.files = files
        self.calls: list[tuple[str, Purpose]] = []

    def __call__(self, ref: str, purpose: Purpose) -> Path | None:
        self.calls.append((ref, purpose))
        if ref not in self.files:
            raise FileNotFoundError(f"no file {ref} of yours")
        return self.files[ref]


def _weights(tmp_path: Path, arch: str, classes: int, shape: tuple[int, ...]) -> Path:
    path = tmp_path / f"{arch}-{classes}.safetensors"
    save_file(build_model(arch, classes, shape).state_dict(), str(path))
    return path


def test_each_reference_is_resolved_once_and_a_fitting_job_is_admitted(tmp_path: Path) -> None:
    teacher = _weights(tmp_path, "small_cnn", 4, (1, 8, 8))
    spec = parse_spec(tiny_spec(teacher={"arch": "small_cnn", "checkpoint": "file_t"}))
    files = Files({"file_t": teacher})
    found = admit(spec, files, LIMITS)
    assert found.problems == []
    assert files.calls == [("file_t", "checkpoint")]
    assert found.local is not None and found.local.teacher is not None
    assert found.local.teacher.checkpoint == str(teacher)
    assert spec.teacher is not None and spec.teacher.checkpoint == "file_t"  # not changed


def test_every_unresolved_reference_is_a_problem_at_its_pointer_and_stops_the_sizing() -> None:
    spec = parse_spec(
        tiny_spec(
            teacher={"arch": "small_cnn", "checkpoint": "file_gone"},
            student={"arch": "mlp_small", "checkpoint": "file_also_gone"},
        )
    )
    found = admit(spec, Files({}), LIMITS)
    assert found.problems == [
        ("/teacher/checkpoint", "no file file_gone of yours"),
        ("/student/checkpoint", "no file file_also_gone of yours"),
    ]
    assert found.local is None


def test_weights_of_another_shape_are_refused_at_the_models_pointer(tmp_path: Path) -> None:
    wrong = _weights(tmp_path, "small_cnn", 7, (1, 8, 8))  # 7 classes, the data has 4
    spec = parse_spec(tiny_spec(teacher={"arch": "small_cnn", "checkpoint": "file_t"}))
    found = admit(spec, Files({"file_t": wrong}), LIMITS)
    assert [p for p, _ in found.problems] == ["/teacher/checkpoint"]
    assert "shape" in found.problems[0][1]


def test_a_job_over_the_limits_is_refused_before_its_weights_are_read(tmp_path: Path) -> None:
    teacher = _weights(tmp_path, "small_cnn", 4, (1, 8, 8))
    spec = parse_spec(tiny_spec(teacher={"arch": "small_cnn", "checkpoint": "file_t"}))
    tight = Limits(
        max_model_params=1_000,
        max_activation_bytes=2**30,
        max_dataset_bytes=2**30,
        max_archive_bytes=2**30,
    )
    found = admit(spec, Files({"file_t": teacher}), tight)
    assert found.problems and all("1,000" in message for _, message in found.problems)


def test_a_built_in_dataset_with_a_path_is_a_problem_and_is_not_resolved() -> None:
    spec = parse_spec(tiny_spec())
    spec = spec.model_copy(update={"dataset": spec.dataset.model_copy(update={"path": "file_d"})})
    files = Files({"file_d": Path("/nowhere")})
    found = admit(spec, files, LIMITS)
    assert found.problems == [("/dataset/path", "built-in datasets take no path")]
    assert files.calls == []


def test_a_reference_the_caller_fetches_later_resolves_to_no_path() -> None:
    """A set by reference that is not on this host yet (the service's s3://) is sized
    where it is fetched: admission leaves its path out instead of failing."""
    spec = parse_spec(tiny_spec(dataset={"builtin": "imagefolder", "path": "s3://bucket/set"}))
    files = Files({"s3://bucket/set": None})
    found = admit(spec, files, LIMITS)
    assert found.problems == []
    assert files.calls == [("s3://bucket/set", "dataset")]
    assert found.local is not None and found.local.dataset.path is None


@pytest.mark.parametrize("augment", [True, False])
def test_warnings_come_back_with_the_problems(augment: bool) -> None:
    spec = parse_spec(tiny_spec(augment={"hflip": augment}))
    found = admit(spec, Files({}), LIMITS)
    assert "/teacher has no checkpoint: it will be randomly initialised" in found.warnings
    said = any("augment is on" in w for w in found.warnings)
    assert said == augment


def test_an_unknown_name_is_the_only_problem_and_no_file_is_resolved() -> None:
    """The registries' names come first: sizes and weights need a model to build."""
    spec = parse_spec(tiny_spec(teacher={"arch": "small_cnn", "checkpoint": "file_t"}))
    assert spec.teacher is not None
    spec = spec.model_copy(  # parse_spec refuses the name: made as a typed caller could
        update={"teacher": spec.teacher.model_copy(update={"arch": "resnet9000"})}
    )
    files = Files({"file_t": Path("/nowhere")})
    found = admit(spec, files, LIMITS)
    assert [p for p, _ in found.problems] == ["/teacher/arch"]
    assert "Did you mean" in found.problems[0][1]
    assert files.calls == []
