"""distillation.sharding fsdp: a causal LM and its live teacher split across gloo ranks on
the CPU (FSDP2's code path; NCCL is bench/gpu.sh's). Two ranks train as one process
does with the same global batch, each holding about half of every model; a checkpoint
resumes on another number of ranks; the spec is checked before anything starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import kdcore
from kdcore.checks.validate import parse_spec
from kdcore.errors import SpecError
from kdcore.io.checkpoints import load_checkpoint
from tests.support.text import GPT2_STUDENT, GPT2_TEACHER, train_tokenizer, write_corpus

ROOT = Path(__file__).resolve().parents[2]
GPT2 = "hf:GPT2LMHeadModel"
NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}


def _distill(corpus, teacher: str, **over) -> dict:
    path, tok = corpus
    spec = {
        "kind": "distill",
        "task": "causal_lm",
        "teacher": {"arch": GPT2, "checkpoint": teacher},
        "student": {"arch": GPT2, "config": {**GPT2_STUDENT, **NO_DROPOUT}},
        "dataset": {"name": "text", "path": str(path), "seq_len": 32, "tokenizer": str(tok)},
        "distillation": {"method": "forward_kl", "sharding": "fsdp"},
        # SGD with momentum: the optimizer has a state to resume; AdamW divides by the
        # root of tiny second moments and magnifies float sums' order
        "training": {
            "epochs": 2,
            "batch_size": 8,
            "optimizer": "sgd",
            "momentum": 0.9,
            "lr": 0.05,
            "precision": "fp32",
            "device": "cpu",
        },
        "resources": {"gpus": 2},
    }
    spec.update(over)
    return spec


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory):
    """A teacher trained in one process, then distilled by 2 sharded ranks."""
    tmp = tmp_path_factory.mktemp("fsdp")
    path = write_corpus(tmp / "corpus.txt", documents=60)
    corpus = (path, train_tokenizer(path, tmp / "tokenizer.json"))
    teacher = {
        "kind": "train",
        "task": "causal_lm",
        "student": {"arch": GPT2, "config": GPT2_TEACHER},
        "dataset": {"name": "text", "path": str(path), "seq_len": 32, "tokenizer": str(corpus[1])},
        "training": {"epochs": 1, "batch_size": 8, "device": "cpu"},
    }
    kdcore.train(teacher, tmp / "teacher")
    spec = _distill(corpus, str(tmp / "teacher/student_hf.zip"))
    report = kdcore.distill(spec, tmp / "two")
    return corpus, spec, report, tmp


def _weights(folder) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


@pytest.mark.integration  # spawned ranks
@pytest.mark.slow
def test_two_sharded_ranks_train_as_one_process_each_holding_half(sharded_run):
    corpus, spec, report, tmp = sharded_run
    alone = {
        **spec,
        "distillation": {**spec["distillation"], "sharding": "none"},
        "resources": {"gpus": 1},
    }
    single = kdcore.distill(alone, tmp / "one")
    assert report["steps"] == single["steps"] > 0 and report["processes"] == 2
    for mine, theirs in zip(report["history"], single["history"], strict=True):
        assert mine["train_losses"]["loss"] == pytest.approx(
            theirs["train_losses"]["loss"], rel=1e-4
        )
        assert mine["perplexity"] == pytest.approx(theirs["perplexity"], rel=1e-4)
    a, b = _weights(tmp / "two"), _weights(tmp / "one")
    assert a.keys() == b.keys()
    for key in a:  # the same global batches, the gradients averaged: the same weights
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    assert report["student"]["perplexity"] == pytest.approx(
        single["student"]["perplexity"], rel=1e-4
    )
    assert report["agreement"] == pytest.approx(single["agreement"], abs=1e-3)
    sharding = report["sharding"]
    assert sharding["strategy"] == "fsdp" and sharding["ranks"] == 2
    assert single["sharding"] is None
    for role, size in (("student", "student"), ("teacher", "teacher")):
        held = sharding["parameters"][role]
        total = report[size]["parameters"]
        assert len(held) == 2 and sum(held) == total  # every element held once
        assert all(0.4 * total <= n <= 0.6 * total for n in held), (held, total)


@pytest.mark.integration
@pytest.mark.slow
def test_a_sharded_checkpoint_resumes_on_another_number_of_ranks(sharded_run):
    corpus, spec, report, tmp = sharded_run
    epoch1 = tmp / "two/checkpoints/epoch1.pt"
    state = load_checkpoint(epoch1)  # one file, read with weights_only
    assert state["epoch"] == 1 and state["optimizer"]["state"]  # whole, by parameter name
    assert all(isinstance(k, str) for k in state["optimizer"]["state"])
    one_rank = {**spec, "resources": {"gpus": 1}}
    resumed = kdcore.distill(one_rank, tmp / "resumed", resume_from=epoch1)
    assert resumed["sharding"]["ranks"] == 1 and resumed["steps"] == report["steps"]
    assert resumed["history"][0] == report["history"][0]  # carried over, not retrained
    assert resumed["history"][1]["perplexity"] == pytest.approx(
        report["history"][1]["perplexity"], rel=1e-4
    )
    a, b = _weights(tmp / "two"), _weights(tmp / "resumed")
    for key in a:  # epoch 2 on one rank gives what it gave on two
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    # without sharding the ranks change what a step is: that resume is still refused
    with pytest.raises(Exception, match="different spec"):
        plain = {**spec, "distillation": {**spec["distillation"], "sharding": "none"}}
        kdcore.distill({**plain, "resources": {"gpus": 1}}, tmp / "plain", resume_from=epoch1)


def _problems(spec: dict) -> dict[str, str]:
    with pytest.raises(SpecError) as caught:
        parse_spec(spec)
    return dict(caught.value.errors)


@pytest.mark.parametrize(
    ("change", "pointer", "words"),
    [
        ({"training": {"batch_size": 5}}, "/training/batch_size", "split evenly across 2"),
        ({"task": "text_classification"}, "/distillation/sharding", "causal_lm"),
        ({"distillation": {"sharding": "zero3"}}, "/distillation/sharding", "fsdp"),
    ],
)
def test_a_sharding_that_cannot_run_is_refused_at_its_field(tmp_path, change, pointer, words):
    path = tmp_path / "c.txt"
    path.write_text("some text")
    spec = _distill((path, None), "teacher.zip")
    spec["dataset"].pop("tokenizer")
    for key, value in change.items():
        spec[key] = {**spec[key], **value} if isinstance(value, dict) else value
    assert words in _problems(spec)[pointer]


def test_an_image_job_cannot_shard():
    spec = json.loads((ROOT / "examples/quickstart_teacher.json").read_text())
    spec["distillation"] = {"sharding": "fsdp"}
    assert "causal_lm" in _problems(spec)["/distillation/sharding"]
