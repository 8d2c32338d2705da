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
from tests.support.encoders import embedding_spec
from tests.support.encoders import write_corpus as encoders_corpus
from tests.support.specs import tiny_spec
from tests.support.text import BERT_TINY, write_corpus, write_labelled, write_prompts

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


def _text_spec(task: str) -> dict:
    """A text job of `task` whose dataset is the reference file_d."""
    gpt2 = {"n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 64}
    if task == "embedding":
        return embedding_spec("file_t", "file_d")
    spec = {
        "kind": "train",
        "task": task,
        "student": {"arch": "hf:GPT2LMHeadModel", "config": gpt2},
        "dataset": {"name": "text", "path": "file_d", "seq_len": 32},
        "training": {"batch_size": 4},
    }
    if task == "text_classification":
        spec["student"] = {"arch": "hf:BertForSequenceClassification", "config": BERT_TINY}
    return spec


@pytest.mark.parametrize(
    ("task", "write", "words"),
    [
        ("embedding", write_labelled, "task embedding reads plain text"),
        ("embedding", write_prompts, "task embedding reads plain text"),
        ("text_classification", write_corpus, 'needs JSONL records {"text", "label"}'),
        ("text_classification", write_prompts, 'needs JSONL records {"text", "label"}'),
        ("causal_lm", write_labelled, 'causal_lm reads {"text"}'),
    ],
)
def test_a_text_set_of_the_wrong_form_for_its_task_is_refused_at_the_dataset(
    tmp_path: Path, task: str, write, words: str
) -> None:
    # before: the job was queued and failed on the worker, or (embedding) trained on
    # each JSONL line's braces and quotes as if they were the passage
    data = write(tmp_path / "data")
    found = admit(parse_spec(_text_spec(task)), Files({"file_d": data, "file_t": data}), LIMITS)
    assert [p for p, _ in found.problems] == ["/dataset/path"], found.problems
    assert words in found.problems[0][1]


@pytest.mark.parametrize(
    ("task", "write"),
    [
        ("text_classification", write_labelled),
        ("causal_lm", write_corpus),
        ("causal_lm", write_prompts),
    ],
)
def test_a_text_set_of_its_tasks_form_passes_the_form_check(
    tmp_path: Path, task: str, write
) -> None:
    data = write(tmp_path / "data")
    found = admit(parse_spec(_text_spec(task)), Files({"file_d": data}), LIMITS)
    assert found.problems == [], found.problems


def test_an_embedding_job_reads_plain_lines_and_its_loader_refuses_jsonl(tmp_path: Path) -> None:
    from kdcore.errors import DataError
    from kdcore.text.embedding.passages import load_passages

    plain = encoders_corpus(tmp_path / "passages.txt")  # its form passes; the teacher is next
    files = Files({"file_d": plain, "file_t": plain})
    found = admit(parse_spec(_text_spec("embedding")), files, LIMITS)
    assert all(p != "/dataset/path" for p, _ in found.problems), found.problems
    assert load_passages(plain, 0.1, 0.1, 0, None).total == 240
    # the library and the CLI, which may skip admission, are refused by the loader itself
    with pytest.raises(DataError, match="task embedding reads plain text"):
        load_passages(write_labelled(tmp_path / "labelled.jsonl"), 0.1, 0.1, 0, None)
