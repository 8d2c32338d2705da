"""Token-level distillation across tokenizers (ULD, kdcore/text/cross_tokens.py): the
positions compared predict tokens that start at the same character, the distance is the
sorted distributions', and a student with its own tokenizer beats the student alone."""

from __future__ import annotations

import pytest
import torch

import kdcore
from kdcore.errors import SpecError
from kdcore.text.cross_tokens import retokenise, uld_distance
from kdcore.text.rows import TextSplit
from kdcore.text.tokens import load_tokenizer
from tests.support.text import GPT2_STUDENT, GPT2_TEACHER, train_tokenizer, write_corpus

GPT2 = "hf:GPT2LMHeadModel"
TRAINING = {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.0, "device": "cpu"}


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    """A corpus and two BPE tokenizers trained on it: the teacher's (every word a token)
    and the student's, smaller (some words in pieces)."""
    tmp = tmp_path_factory.mktemp("cross")
    big = write_corpus(tmp / "big.txt", documents=1500, seed=0)
    small = write_corpus(tmp / "small.txt", documents=80, seed=5)
    teacher = train_tokenizer(big, tmp / "teacher.json", vocab_size=500)
    student = train_tokenizer(big, tmp / "student.json", vocab_size=330)
    return tmp, big, small, teacher, student


def test_compared_positions_predict_tokens_that_start_at_the_same_character(texts):
    _, _, small, t_path, s_path = texts
    teacher, student = load_tokenizer(t_path), load_tokenizer(s_path)
    assert teacher.vocab_size != student.vocab_size
    ids = student.encode(small.read_text())[: 4 * 48]
    ids[30] = ids[100] = student.eos_id  # ends of text inside rows
    rows = torch.tensor(ids).view(4, 48)
    targets = torch.ones_like(rows, dtype=torch.bool)
    targets[:, :5] = False  # a prompt: not predicted, not compared
    batch = retokenise(TextSplit(rows, torch.ones_like(rows), targets), student, teacher, 256)
    assert len(batch.student_positions) > 0.5 * int(targets[:, 1:].sum())
    width = batch.ids.shape[1]
    for s_flat, t_flat in zip(
        batch.student_positions.tolist(), batch.teacher_positions.tolist(), strict=True
    ):
        (b, k), (bt, m) = divmod(s_flat, 48), divmod(t_flat, width)
        assert b == bt and k + 1 >= 5  # the same row; a predicted token
        # what comes before the predicted token is the same text in both tokenisations
        s_text = student.decode(rows[b, : k + 1].tolist())
        t_text = teacher.decode(batch.ids[b, : m + 1].tolist())
        assert s_text == t_text, (s_text[-30:], t_text[-30:])


def test_the_distance_compares_sorted_distributions_padded_with_zeros():
    s = torch.tensor([[0.0, 1.0, 2.0]]).log_softmax(-1)
    t = s[:, [2, 0, 1]]  # the same probabilities on other tokens: nothing to learn
    assert uld_distance(s, t, 1.0).item() == pytest.approx(0.0, abs=1e-6)
    one = torch.tensor([[0.0, -1e9]])  # all mass on one token, against uniform over 4
    uniform = torch.zeros(1, 4)
    assert uld_distance(one, uniform, 1.0).item() == pytest.approx(0.75 + 3 * 0.25, abs=1e-6)


@pytest.mark.slow
def test_a_student_with_its_own_tokenizer_beats_the_student_alone(texts):
    tmp, big, small, t_tok, s_tok = texts

    def train(out, config, path, tok, **training):
        spec = {
            "kind": "train",
            "task": "causal_lm",
            "student": {"arch": GPT2, "config": config},
            "dataset": {"name": "text", "path": str(path), "seq_len": 64, "tokenizer": str(tok)},
            "training": {**TRAINING, "batch_size": 16, **training},
        }
        kdcore.train(spec, tmp / out)
        return str(tmp / out / "student_hf.zip")

    teacher = train("teacher", GPT2_TEACHER, big, t_tok, epochs=6)
    # the student's folder: its tokenizer and (barely trained) weights
    student = train("student", GPT2_STUDENT, small, s_tok, epochs=1, lr=1e-5)
    spec = {
        "kind": "distill",
        "task": "causal_lm",
        "teacher": {"arch": GPT2, "checkpoint": teacher},
        "student": {"arch": GPT2, "checkpoint": student},
        "dataset": {"name": "text", "path": str(small), "seq_len": 64},
        "distillation": {"method": "forward_kl"},
        "training": {**TRAINING, "batch_size": 4, "epochs": 30},
        "baseline": True,
    }
    with pytest.raises(SpecError, match="'uld'"):  # token by token needs one tokenizer
        kdcore.distill(spec, tmp / "kl")
    spec["distillation"] = {"method": "uld"}
    report = kdcore.distill(spec, tmp / "uld")
    assert report["tokenizer"]["identical"] is False
    assert 0.5 < report["uld_compared_fraction"] <= 1.0  # most positions align
    # the same student from the same folder, data, budget and seed, without the teacher
    assert report["student"]["perplexity"] < report["baseline"]["perplexity"]
    assert report["kd_gain"] > 1.0


def test_uld_that_compares_no_position_fails_fast_instead_of_training_alone(
    texts, tmp_path, monkeypatch
):
    """Tokenizations that never share a boundary would give a zero KD term: the job
    would train the student alone and report distillation."""
    import kdcore.text.trainer as trainer
    from kdcore.errors import DataError

    _, _, small, t_tok, s_tok = texts

    def folder(out, config, tok):
        spec = {
            "kind": "train",
            "task": "causal_lm",
            "student": {"arch": GPT2, "config": config},
            "dataset": {"name": "text", "path": str(small), "seq_len": 32, "tokenizer": str(tok)},
            "training": {**TRAINING, "batch_size": 16, "epochs": 1},
        }
        kdcore.train(spec, tmp_path / out)
        return str(tmp_path / out / "student_hf.zip")

    def no_pairs(*args, **kwargs):
        batch = retokenise(*args, **kwargs)
        batch.student_positions = batch.student_positions[:0]
        batch.teacher_positions = batch.teacher_positions[:0]
        return batch

    spec = {
        "kind": "distill",
        "task": "causal_lm",
        "teacher": {"arch": GPT2, "checkpoint": folder("t", GPT2_TEACHER, t_tok)},
        "student": {"arch": GPT2, "checkpoint": folder("s", GPT2_STUDENT, s_tok)},
        "dataset": {"name": "text", "path": str(small), "seq_len": 32},
        "distillation": {"method": "uld", "teacher_check": "warn"},
        "training": {**TRAINING, "batch_size": 4, "epochs": 1},
    }
    monkeypatch.setattr(trainer, "retokenise", no_pairs)
    with pytest.raises(DataError, match="uld compared no position in its first 4 batches"):
        kdcore.distill(spec, tmp_path / "job")
    assert not (tmp_path / "job" / "model.safetensors").exists()
