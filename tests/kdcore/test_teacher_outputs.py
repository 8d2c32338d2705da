"""A causal-LM teacher's stored top-k outputs (kdcore.text.teacher_store): the format's
encodings, a later job that distils from them with no teacher model, and stores that
are made for other rows, damaged or hostile."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import kdcore
from kdcore.checks.input_files import check_input_file
from kdcore.checks.validate import parse_spec
from kdcore.errors import DataError, SpecError
from kdcore.text import teacher_store as ts
from tests.support.text import GPT2_STUDENT, GPT2_TEACHER, train_tokenizer, write_corpus

GPT2 = "hf:GPT2LMHeadModel"


@pytest.mark.parametrize("vocab", [2, 257, 50_257, 65_536, 65_537, 128_256])
def test_ids_pack_into_as_few_bits_as_the_vocabulary_needs_and_come_back(vocab):
    ids = np.random.default_rng(0).integers(0, vocab, size=(3, 5, 64))
    ids[0, 0, 0] = vocab - 1
    bits = ts.id_bits(vocab)
    packed = ts.pack_ids(ids, bits)
    assert packed.shape == (3, 5, -(-64 * bits // 8)) and packed.dtype == np.uint8
    assert np.array_equal(ts.unpack_ids(packed, 64, bits), ids)


def test_a_token_takes_at_most_150_bytes_at_k_64():
    assert ts.bytes_per_token(64, 50_257) == 142  # GPT-2: 16-bit ids
    assert ts.bytes_per_token(64, 128_256) == 150  # Llama 3: 17-bit ids
    assert ts.bytes_per_token(64, 32_000) < 64 * (2 + 4)  # fp16 values, int32 ids: 384
    assert (
        ts.values_encoding(4) == "fp16" and ts.bytes_per_token(4, 257) == 5 + 8
    )  # 4 x 9 bits; fp16


def _teacher_like_logprobs(k: int) -> np.ndarray:
    torch.manual_seed(0)
    logits = torch.randn(200, 1000) * 3 + torch.randn(1000) * 2  # a Zipf-like spread
    return logits.log_softmax(-1).topk(k, -1).values.numpy()


@pytest.mark.parametrize("k", [16, 64])
def test_the_encoded_values_keep_the_top_exactly_and_the_distribution_close(k):
    logp = _teacher_like_logprobs(k)
    back = ts.decode_values(ts.encode_values(logp), k)
    assert np.allclose(back[:, : ts.EXACT_HEAD], logp[:, : ts.EXACT_HEAD], atol=2e-2)
    p = torch.from_numpy(logp).softmax(-1)
    kl = (p * (p.log() - torch.from_numpy(back).log_softmax(-1))).sum(-1).mean()
    assert kl < 0.01, kl  # nats: small beside a KD loss (about 0.1 to 1 here)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("outputs")
    path = write_corpus(tmp / "corpus.txt", documents=60)
    return path, train_tokenizer(path, tmp / "tokenizer.json"), tmp


def _distill(corpus, **over) -> dict:
    path, tok, _ = corpus
    spec = {
        "kind": "distill",
        "task": "causal_lm",
        "teacher": {"arch": GPT2, "config": GPT2_TEACHER},
        "student": {"arch": GPT2, "config": GPT2_STUDENT},
        "dataset": {"name": "text", "path": str(path), "seq_len": 32, "tokenizer": str(tok)},
        "distillation": {"method": "forward_kl", "teacher_topk": 16},
        "training": {
            "epochs": 2,
            "batch_size": 8,
            "optimizer": "adamw",
            "lr": 3e-3,
            "device": "cpu",
            "precision": "fp32",
        },
        "baseline": True,
    }
    spec.update(over)
    return spec


@pytest.fixture(scope="module")
def first_job(corpus):
    """A teacher trained here, then a top-k job that publishes its outputs."""
    path, tok, tmp = corpus
    teacher = _distill(corpus, kind="train", student={"arch": GPT2, "config": GPT2_TEACHER})
    for field in ("teacher", "distillation", "baseline"):
        del teacher[field]
    teacher["training"]["epochs"] = 4
    kdcore.train(teacher, tmp / "teacher")
    spec = _distill(corpus, teacher={"arch": GPT2, "checkpoint": str(tmp / "teacher")})
    report = kdcore.distill(spec, tmp / "first")
    return spec, report, tmp / "first"


def test_a_second_job_distils_from_the_first_jobs_outputs_alone_into_the_same_student(
    corpus, first_job, tmp_path
):
    spec, report, out = first_job
    assert report["files"]["teacher_outputs"]["name"] == "teacher_outputs.zip"
    vocab = report["tokenizer"]["vocab_size"]
    assert report["teacher_outputs"]["bytes_per_token"] == ts.bytes_per_token(16, vocab)
    second = _distill(corpus, teacher={"outputs": str(out / "teacher_outputs.zip")})
    again = kdcore.distill(second, tmp_path / "second")
    assert "teacher" not in again  # no teacher model was built or measured
    assert again["teacher_outputs"]["rows"] == report["dataset"]["train"]
    first_weights = load_file(out / "model.safetensors")
    second_weights = load_file(tmp_path / "second/model.safetensors")
    assert first_weights.keys() == second_weights.keys()
    assert all(torch.equal(first_weights[k], second_weights[k]) for k in first_weights)
    assert again["student"]["perplexity"] == report["student"]["perplexity"]
    assert again["baseline"]["perplexity"] == report["baseline"]["perplexity"]
    assert "teacher_outputs" not in again["files"]  # given, not made: not published again


def test_outputs_made_for_other_rows_fail_before_training_and_say_how_many_matched(
    corpus, first_job, tmp_path
):
    _, _, out = first_job
    spec = _distill(corpus, teacher={"outputs": str(out / "teacher_outputs.zip")})
    spec["training"]["seed"] = 1  # another split: some training rows were held out before
    with pytest.raises(DataError, match=r"hold \d+ of the job's \d+ training rows"):
        kdcore.distill(spec, tmp_path / "other")
    spec = _distill(corpus, teacher={"outputs": str(out / "teacher_outputs.zip")})
    spec["dataset"]["seq_len"] = 16
    with pytest.raises(DataError, match="set it to 32"):
        kdcore.distill(spec, tmp_path / "short")
    spec = _distill(corpus, teacher={"outputs": str(out / "teacher_outputs.zip")})
    other = train_tokenizer(corpus[0], tmp_path / "other.json", vocab_size=280)
    spec["dataset"]["tokenizer"] = str(other)  # not the BPE the outputs were made with
    with pytest.raises(DataError, match="another tokenizer"):
        kdcore.distill(spec, tmp_path / "other")
    spec = _distill(corpus, teacher={"outputs": str(out / "teacher_outputs.zip")})
    del spec["dataset"]["tokenizer"]  # none given: the outputs' own serves
    assert kdcore.distill(spec, tmp_path / "theirs")["tokenizer"]["vocab_size"] == 300


@pytest.mark.parametrize(
    ("change", "pointer"),
    [
        ({"teacher": {"outputs": "t.zip", "arch": GPT2}}, "/teacher"),
        ({"distillation": {"method": "sequence"}}, "/teacher/outputs"),
        ({"task": "classification", "dataset": {"name": "digits"}}, "/teacher/outputs"),
        (
            {"student": {"arch": GPT2, "config": GPT2_STUDENT, "init_from_teacher": True}},
            "/student/init_from_teacher",
        ),
    ],
)
def test_specs_that_cannot_use_stored_outputs_are_refused_where_they_go_wrong(change, pointer):
    spec = {
        "kind": "distill",
        "task": "causal_lm",
        "teacher": {"outputs": "t.zip"},
        "student": {"arch": GPT2, "config": GPT2_STUDENT},
        "dataset": {"name": "text", "path": "corpus.txt"},
        "distillation": {"method": "forward_kl"},
    }
    spec.update(change)
    with pytest.raises(SpecError) as err:
        parse_spec(spec)
    assert any(p.startswith(pointer) for p, _ in err.value.errors), err.value.errors


def _rewrite(src: Path, dst: Path, change) -> Path:
    """A copy of a store's zip with one member replaced by change(name, bytes)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            zout.writestr(name, change(name, zin.read(name)))
    return dst


def _npy(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


def _npz() -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, tokens=np.zeros((2, 2), np.int32))
    return buf.getvalue()


def _meta_with(**fields):
    def change(name, data):
        if name != ts.META:
            return data
        return json.dumps({**json.loads(data), **fields}).encode()

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_meta_with(format="pickle"), "is not of format"),
        (_meta_with(k=100_000), r"k must be a whole number in \[1, 256\]"),
        (_meta_with(rows=True), "rows must be a whole number"),
        (_meta_with(id_bits=32), "take id_bits"),
        (_meta_with(tokenizer=None), "tokenizer.identity"),
        (_meta_with(tokenizer={"identity": "0" * 64}), "is not the tokenizer"),
        (lambda n, d: b"{}" if n == ts.TOKENIZER else d, "not a tokenizer.json"),
        (lambda n, d: b"{not json" if n == ts.META else d, "is not JSON"),
        (
            lambda n, d: _npy(np.array([{"a": 1}], dtype=object)) if n == ts.VALUES else d,
            "not a plain .npy array",
        ),
        (
            lambda n, d: _npy(np.zeros((2, 2), np.float32)) if n == ts.VALUES else d,
            "its description says float16",
        ),
        (lambda n, d: b"" if n == ts.IDS else d, "not a plain .npy array"),
        (lambda n, d: _npz() if n == ts.TOKENS else d, "not a plain .npy array"),
    ],
)
def test_damaged_or_hostile_outputs_are_refused_on_upload_with_a_reason(
    first_job, tmp_path, change, message
):
    _, _, out = first_job
    bad = _rewrite(out / "teacher_outputs.zip", tmp_path / "bad.zip", change)
    with pytest.raises(DataError, match=message):
        check_input_file(bad, "bad.zip", "teacher_outputs", 1 << 30)


def test_an_outputs_zip_that_unpacks_past_the_cap_is_refused_before_unpacking(first_job, tmp_path):
    _, _, out = first_job
    size = (out / "teacher_outputs.zip").stat().st_size
    with pytest.raises(DataError, match="unpack to"):
        check_input_file(out / "teacher_outputs.zip", "t.zip", "teacher_outputs", size // 2)
    assert not list(tmp_path.iterdir())


def test_token_ids_beyond_the_vocabulary_fail_the_job_instead_of_indexing_out_of_range(
    corpus, first_job, tmp_path
):
    _, _, out = first_job

    def change(name, data):
        if name != ts.IDS:
            return data
        import io

        ids = np.load(io.BytesIO(data))
        return _npy(np.full_like(ids, 0xFF))  # every bit set: ids of 2^bits - 1 >= 300

    bad = _rewrite(out / "teacher_outputs.zip", tmp_path / "bad.zip", change)
    spec = _distill(corpus, teacher={"outputs": str(bad)})
    with pytest.raises(DataError, match="beyond their vocabulary"):
        kdcore.distill(spec, tmp_path / "job")
