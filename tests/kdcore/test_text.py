"""kdcore.text: tokenizers compared by what decides their tokens, text packed and
masked as documented, the token-level losses exactly as their papers write them, the
student started from the teacher's layers, outputs that transformers loads, exact
resume of training and of generation; and hostile inputs refused."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import kdcore
from kdcore.checks.validate import parse_spec
from kdcore.errors import Cancelled, DataError, SpecError
from kdcore.spec import DatasetSpec
from kdcore.text.data import check_text_file, encode, load_text, read_records
from kdcore.text.losses import divergence, teacher_topk, token_kd_loss
from kdcore.text.models import build_text_model, ends_kept, init_from_teacher, read_model_folder
from kdcore.text.tokens import bytes_tokenizer, load_tokenizer
from tests.support.stops import StopBeforeStep
from tests.support.text import (
    GPT2_STUDENT,
    GPT2_TEACHER,
    train_tokenizer,
    write_corpus,
    write_prompts,
)

GPT2 = "hf:GPT2LMHeadModel"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("text")
    path = write_corpus(tmp / "corpus.txt", documents=60)
    return path, train_tokenizer(path, tmp / "tokenizer.json")


def test_tokenizers_are_the_same_when_their_tokens_are(corpus, tmp_path):
    _, path = corpus
    a, b = load_tokenizer(path), load_tokenizer(path)
    assert a.identity() == b.identity() != bytes_tokenizer().identity()
    spec = json.loads(path.read_text())
    spec["padding"] = {
        "strategy": "BatchLongest",
        "direction": "Right",
        "pad_to_multiple_of": None,
        "pad_id": 1,
        "pad_type_id": 0,
        "pad_token": "<pad>",
    }  # padding does not change tokens
    (tmp_path / "padded.json").write_text(json.dumps(spec))
    assert load_tokenizer(tmp_path / "padded.json").identity() == a.identity()
    spec["model"]["vocab"]["zzz-new"] = len(spec["model"]["vocab"])  # a vocabulary does
    (tmp_path / "other.json").write_text(json.dumps(spec))
    assert load_tokenizer(tmp_path / "other.json").identity() != a.identity()
    text = "the cat sees the ball."
    assert (
        a.decode(a.encode(text)) == text == bytes_tokenizer().decode(bytes_tokenizer().encode(text))
    )


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ('{"model": {"type": "Nope"}}', "not a tokenizer.json"),
        ("not json at all", "not a tokenizer.json"),
    ],
)
def test_a_bad_tokenizer_is_a_clear_error(tmp_path, content, words):
    (tmp_path / "t.json").write_text(content)
    with pytest.raises(DataError, match=words):
        load_tokenizer(tmp_path / "t.json")


def test_plain_text_is_packed_and_prompts_mask_all_but_the_completion(corpus, tmp_path):
    path, tok_path = corpus
    tok = load_tokenizer(tok_path)
    form, records = read_records(path)
    rows = encode(form, records, tok, 32)
    stream = [t for r in records for t in tok.encode(r["text"]) + [tok.eos_id]]
    assert form == "plain" and rows.ids.shape[1] == 32
    assert rows.ids.flatten().tolist() == stream[: rows.ids.numel()]  # packed, in order
    assert rows.targets[:, 1:].all() and rows.attention.all()  # every prediction counts
    form, records = read_records(write_prompts(tmp_path / "p.jsonl", count=5))
    rows = encode(form, records, tok, 32)
    for row, record in zip(range(5), records, strict=True):
        prompt = len(tok.encode(record["prompt"]))
        full = prompt + len(tok.encode(record["completion"])) + 1
        assert not rows.targets[row, :prompt].any()  # the prompt is not predicted
        assert rows.targets[row, prompt:full].all() and not rows.targets[row, full:].any()
        assert rows.attention[row, :full].all() and not rows.attention[row, full:].any()


@pytest.mark.parametrize(
    ("lines", "words"),
    [
        (['{"text": "a"}', "{broken"], "line 2: not JSON"),
        (['{"text": "a", "extra": 1}'], "line 1: a record is"),
        (['{"text": "a"}', '{"prompt": "p", "completion": "c"}'], "line 2: every record"),
        (['{"text": "a", "label": -1}'], "label must be an integer"),
        (['{"text": 5}'], "text must be a string"),
    ],
)
def test_malformed_records_name_their_line(tmp_path, lines, words):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=words):
        read_records(path)
    with pytest.raises(DataError, match=words.split(":")[-1].strip()):
        check_text_file(path, "bad.jsonl")


def test_text_that_is_not_utf8_or_too_short_is_refused(tmp_path, corpus):
    (tmp_path / "latin.txt").write_bytes(b"abc \xe9t\xe9")  # latin-1, not UTF-8
    with pytest.raises(DataError, match="not UTF-8"):
        check_text_file(tmp_path / "latin.txt", "latin.txt")
    (tmp_path / "short.txt").write_text("a few words")
    spec = DatasetSpec(name="text", path=str(tmp_path / "short.txt"), seq_len=64)
    with pytest.raises(DataError, match="fewer than 4 rows"):
        load_text(spec, "causal_lm", load_tokenizer(corpus[1]), 0)


def _logp(n: int, v: int, seed: int) -> torch.Tensor:
    return F.log_softmax(torch.randn(n, v, generator=torch.Generator().manual_seed(seed)), -1)


def test_the_divergences_are_the_papers():
    s, t = _logp(6, 11, 0), _logp(6, 11, 1)
    p, q = t.exp(), s.exp()
    assert torch.allclose(divergence("forward_kl", s, t, 0.5), (p * (t - s)).sum(-1), atol=1e-6)
    assert torch.allclose(divergence("reverse_kl", s, t, 0.5), (q * (s - t)).sum(-1), atol=1e-6)
    beta = 0.3
    m = beta * p + (1 - beta) * q  # GKD: JSD(beta) = beta KL(p||m) + (1-beta) KL(q||m)
    jsd = beta * (p * (p.log() - m.log())).sum(-1) + (1 - beta) * (q * (q.log() - m.log())).sum(-1)
    assert torch.allclose(divergence("gkd", s, t, beta), jsd, atol=1e-6)
    for method in ("forward_kl", "reverse_kl", "gkd"):
        assert divergence(method, s, s, beta).abs().max() < 1e-6  # zero at the teacher


def test_the_loss_counts_predicted_tokens_only_and_top_k_of_all_is_exact():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 5, 7, generator=g), torch.randn(2, 5, 7, generator=g)
    ids = torch.randint(0, 7, (2, 5), generator=g)
    targets = torch.ones(2, 5, dtype=torch.bool)
    targets[1, 3:] = False  # padding: not predicted
    full = token_kd_loss("forward_kl", student, teacher, ids, targets, 2.0, 0.5, 0.5)
    mask = targets[:, 1:]
    s, t = student[:, :-1][mask] / 2.0, teacher[:, :-1][mask] / 2.0
    kl = F.kl_div(
        F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean"
    )
    ce = F.cross_entropy(student[:, :-1][mask], ids[:, 1:][mask])
    assert torch.allclose(full["kd"], kl * 4.0, atol=1e-5)  # T^2
    assert torch.allclose(full["loss"], 0.5 * ce + 0.5 * kl * 4.0, atol=1e-5)
    topk = token_kd_loss(
        "forward_kl", student, teacher_topk(teacher, 7), ids, targets, 2.0, 0.5, 0.5
    )
    assert torch.allclose(topk["kd"], full["kd"], atol=2e-3)  # fp16 values of every token


def test_the_student_starts_from_every_other_teacher_layer():
    tok = bytes_tokenizer()
    torch.manual_seed(0)
    teacher = build_text_model(GPT2, GPT2_TEACHER, "causal_lm", tok)
    student = build_text_model(GPT2, GPT2_STUDENT, "causal_lm", tok)
    assert init_from_teacher(student, teacher) == [0, 2]
    s, t = student.state_dict(), teacher.state_dict()
    assert s["transformer.h.1.attn.c_attn.weight"].equal(t["transformer.h.2.attn.c_attn.weight"])
    assert s["transformer.wte.weight"].equal(t["transformer.wte.weight"])
    assert s["transformer.ln_f.weight"].equal(t["transformer.ln_f.weight"])


def test_the_student_starts_from_the_teacher_layers_named_or_keeps_the_ends() -> None:
    tok = bytes_tokenizer()
    torch.manual_seed(0)
    teacher = build_text_model(GPT2, GPT2_TEACHER, "causal_lm", tok)  # 4 layers
    student = build_text_model(GPT2, GPT2_STUDENT, "causal_lm", tok)  # 2 layers
    assert init_from_teacher(student, teacher, [3, 1]) == [3, 1]
    s, t = student.state_dict(), teacher.state_dict()
    assert s["transformer.h.0.attn.c_attn.weight"].equal(t["transformer.h.3.attn.c_attn.weight"])
    assert init_from_teacher(student, teacher, keep_ends=True) == [0, 3]
    assert [ends_kept(3, 6), ends_kept(6, 12), ends_kept(1, 6)] == [
        [0, 3, 5],
        [0, 2, 4, 7, 9, 11],
        [5],
    ]
    for wrong in ([0], [0, 4], [0, 1, 2]):  # too few, out of range, too many
        with pytest.raises(SpecError) as caught:
            init_from_teacher(student, teacher, wrong)
        assert caught.value.errors[0][0] == "/student/teacher_layers"
    with pytest.raises(SpecError, match="teacher_layers"):  # only with init_from_teacher
        parse_spec(
            {
                "kind": "train",
                "task": "causal_lm",
                "student": {"arch": "hf:GPT2LMHeadModel", "teacher_layers": [0]},
                "dataset": {"name": "text", "path": "x.txt"},
            }
        )


@pytest.mark.parametrize(
    ("change", "pointer"),
    [
        ({"student": {"arch": "resnet18"}}, "/student/arch"),
        ({"student": {"arch": "hf:ViTForImageClassification", "config": {}}}, "/student/arch"),
        ({"distillation": {"method": "dkd"}}, "/distillation/method"),
        ({"dataset": {"name": "digits"}}, "/dataset/name"),
        ({"augment": {"hflip": True}}, "/augment"),
        ({"export": ["torchscript"]}, "/export"),
        ({"distillation": {"method": "sequence", "teacher_topk": 4}}, "/distillation/teacher_topk"),
        ({"student": {"arch": GPT2, "config": {"auto_map": {"x": "y"}}}}, "/student/config"),
    ],
)
def test_text_specs_that_cannot_run_are_refused_where_they_go_wrong(change, pointer):
    spec = {
        "kind": "distill",
        "task": "causal_lm",
        "teacher": {"arch": GPT2, "config": GPT2_TEACHER},
        "student": {"arch": GPT2, "config": GPT2_STUDENT},
        "dataset": {"name": "text", "path": "corpus.txt"},
        "distillation": {"method": "forward_kl"},
    }
    for key, value in change.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    with pytest.raises(SpecError) as err:
        parse_spec(spec)
    assert pointer in [p for p, _ in err.value.errors], err.value.errors


def _spec(corpus, out, **over) -> dict:
    path, tok = corpus
    spec = {
        "kind": "train",
        "task": "causal_lm",
        "student": {"arch": GPT2, "config": GPT2_STUDENT},
        "dataset": {"name": "text", "path": str(path), "seq_len": 32, "tokenizer": str(tok)},
        "training": {
            "epochs": 2,
            "batch_size": 8,
            "optimizer": "adamw",
            "lr": 3e-3,
            "device": "cpu",
        },
    }
    spec.update(over)
    return spec


def test_the_outputs_are_a_folder_transformers_loads(corpus, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    report = kdcore.train(_spec(corpus, tmp_path), tmp_path / "out")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    ids = torch.tensor([tok.encode("the cat sees")])
    mine = build_text_model(GPT2, GPT2_STUDENT, "causal_lm", load_tokenizer(corpus[1]))
    mine.load_state_dict(load_file(tmp_path / "out/model.safetensors"), strict=False)
    mine.tie_weights()
    assert torch.allclose(model(ids).logits, mine.eval()(ids).logits, atol=1e-5)
    assert (
        report["student"]["perplexity"] > 1.0
        and report["files"]["hf_zip"]["name"] == "student_hf.zip"
    )
    folder = read_model_folder(tmp_path / "out/student_hf.zip")  # and it can teach a job
    assert folder.tokenizer is not None and folder.weights is not None
    folder.close()


def test_a_text_run_resumes_mid_epoch_exactly(corpus, tmp_path):
    spec = _spec(corpus, tmp_path)
    straight = kdcore.train(spec, tmp_path / "straight")
    half = straight["steps"] // 2 + 1
    with pytest.raises(Cancelled):
        kdcore.train(spec, tmp_path / "cut", callbacks=StopBeforeStep(half))
    kdcore.train(
        spec, tmp_path / "cut", resume_from=tmp_path / f"cut/checkpoints/interrupted-step{half}.pt"
    )
    a, b = (
        load_file(tmp_path / "straight/model.safetensors"),
        load_file(tmp_path / "cut/model.safetensors"),
    )
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def test_generation_resumes_to_the_same_file(corpus, tmp_path):
    teacher_dir = tmp_path / "teacher"
    kdcore.train(
        _spec(corpus, tmp_path, training={"epochs": 1, "batch_size": 8, "device": "cpu"}),
        teacher_dir,
    )
    spec = _spec(corpus, tmp_path)
    spec.update(
        kind="distill",
        teacher={"arch": GPT2, "checkpoint": str(teacher_dir / "student_hf.zip")},
        distillation={"method": "sequence", "generation_max_tokens": 8},
        training={"epochs": 1, "batch_size": 8, "eval_batch_size": 4, "device": "cpu"},
    )
    kdcore.distill(spec, tmp_path / "straight")
    with pytest.raises(Cancelled):  # stopped after two batches of prompts
        kdcore.distill(spec, tmp_path / "cut", callbacks=StopBeforeStep(2))
    lines = (tmp_path / "cut/generations.jsonl").read_text().splitlines()
    assert len(lines) == 8
    # packed text's openings are continued through ends of text, as packed rows run on
    assert all(len(json.loads(line)["completion_ids"]) == 8 for line in lines)
    kdcore.distill(spec, tmp_path / "cut")  # generation picks up at its third batch
    assert (tmp_path / "cut/generations.jsonl").read_text() == (
        tmp_path / "straight/generations.jsonl"
    ).read_text()


def test_different_tokenizers_allow_only_sequence_level_kd(corpus, tmp_path):
    teacher_dir = tmp_path / "teacher"
    kdcore.train(
        _spec(corpus, tmp_path, training={"epochs": 1, "batch_size": 8, "device": "cpu"}),
        teacher_dir,
    )
    spec = _spec(corpus, tmp_path)
    spec["dataset"].pop("tokenizer")  # the teacher's BPE; the student's own folder: bytes
    student_dir = tmp_path / "bytes-student"
    kdcore.train(
        {
            **_spec(corpus, tmp_path),
            "dataset": {"name": "text", "path": str(corpus[0]), "seq_len": 32},
            "training": {"epochs": 1, "device": "cpu"},
        },
        student_dir,
    )
    spec.update(
        kind="distill",
        teacher={"arch": GPT2, "checkpoint": str(teacher_dir / "student_hf.zip")},
        student={"arch": GPT2, "checkpoint": str(student_dir / "student_hf.zip")},
        distillation={"method": "forward_kl"},
    )
    with pytest.raises(SpecError, match="use method 'sequence'"):
        kdcore.distill(spec, tmp_path / "kl")
    spec["distillation"] = {"method": "sequence", "generation_max_tokens": 8}
    report = kdcore.distill(spec, tmp_path / "seq")
    assert (
        report["tokenizer"]["identical"] is False
        and report["tokenizer"]["student"] == "student_hf.zip/tokenizer.json"
    )
    assert math.isfinite(report["student"]["perplexity"])
    # the student alone starts where the student does, from its folder's weights (it
    # used to fail the job after training: "a baseline needs the student built from its
    # config"); at a negligible learning rate it keeps the folder's perplexity (one
    # epoch's training: far from what random weights give)
    spec.update(baseline=True, training={**spec["training"], "epochs": 1, "lr": 1e-9})
    report = kdcore.distill(spec, tmp_path / "seq-baseline")
    alone = json.loads((student_dir / "report.json").read_text())["student"]["perplexity"]
    assert report["baseline"]["perplexity"] == pytest.approx(alone, rel=1e-3)


@pytest.mark.integration  # spawned ranks (gloo on the CPU: the NCCL path's code)
def test_two_ranks_train_a_language_model_as_one_process_with_the_global_batch(corpus, tmp_path):
    one = _spec(corpus, tmp_path)
    # SGD: AdamW divides by the root of tiny second moments and magnifies float sums
    one["training"] = {
        **one["training"],
        "batch_size": 8,
        "precision": "fp32",
        "optimizer": "sgd",
        "lr": 0.05,
    }
    one["student"] = {
        "arch": GPT2,
        "config": {**GPT2_STUDENT, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0},
    }
    two = {**one, "resources": {"gpus": 2}, "training": {**one["training"], "batch_size": 4}}
    two["dataset"] = {**one["dataset"], "streaming": True}  # rank 0 writes rows, 1 reads
    single = kdcore.train(one, tmp_path / "one")
    parallel = kdcore.train(two, tmp_path / "two")
    assert parallel["steps"] == single["steps"] > 0 and parallel["processes"] == 2
    assert parallel["dataset"]["loading"]["path"] == "streaming"
    a, b = (
        load_file(tmp_path / "one/model.safetensors"),
        load_file(tmp_path / "two/model.safetensors"),
    )
    for key in a:  # the same global batches, gradients averaged: the same weights
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("packed", [True, False])
def test_a_model_folder_with_an_oversized_tokenizer_is_refused(tmp_path, packed):
    import os
    import zipfile

    from kdcore.errors import CheckpointError

    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1}))
    with open(folder / "tokenizer.json", "wb") as fh:  # 65 MiB, the cap 64
        fh.truncate(65 * 1024**2)
    path = folder
    if packed:
        path = tmp_path / "folder.zip"
        with zipfile.ZipFile(path, "w") as zf:
            zf.write(folder / "config.json", "config.json")
            zf.writestr("tokenizer.json", os.urandom(33 * 1024**2).hex())
    with pytest.raises(CheckpointError, match="tokenizer.json is over 67,108,864 bytes"):
        read_model_folder(path)


def test_gradient_checkpointing_takes_the_same_steps_and_bf16_trains(corpus, tmp_path):
    spec = _spec(corpus, tmp_path)
    spec["student"] = {
        "arch": GPT2,
        "config": {**GPT2_STUDENT, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0},
    }
    spec["training"] = {**spec["training"], "precision": "fp32"}
    plain = kdcore.train(spec, tmp_path / "plain")
    recompute = {**spec, "training": {**spec["training"], "gradient_checkpointing": True}}
    checkpointed = kdcore.train(recompute, tmp_path / "checkpointed")
    assert (
        checkpointed["gradient_checkpointing"] is True and plain["gradient_checkpointing"] is False
    )
    for a, b in zip(plain["history"], checkpointed["history"], strict=True):
        assert a["train_losses"]["loss"] == pytest.approx(b["train_losses"]["loss"], rel=1e-5)
    # bf16 autocast (emulated where the CPU has no native bf16): it trains, near fp32
    bf16 = kdcore.train(
        {**spec, "training": {**spec["training"], "precision": "bf16"}}, tmp_path / "bf16"
    )
    assert bf16["precision"] == "bf16" and plain["precision"] == "fp32"
    assert bf16["student"]["perplexity"] == pytest.approx(plain["student"]["perplexity"], rel=0.1)


@pytest.mark.parametrize("stop_at_eos", [True, False])
def test_completions_end_at_the_end_of_text_or_run_through_it(tmp_path, stop_at_eos):
    from kdcore.engine.callbacks import Callbacks
    from kdcore.text.generate import generate_completions

    tok = bytes_tokenizer()
    teacher = build_text_model(
        GPT2, {"n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 64}, "causal_lm", tok
    )
    with torch.no_grad():  # every position's hidden state is e; only <|endoftext|> scores
        e = torch.full((16,), 0.6)
        teacher.transformer.ln_f.weight.zero_()
        teacher.transformer.ln_f.bias.copy_(e)
        teacher.transformer.wte.weight.zero_()  # the head is tied to it
        teacher.transformer.wte.weight[tok.eos_id] = e  # logit 5.76: p(end) ~ 0.55
    prompts = [tok.encode("abc")] * 16
    out = generate_completions(
        teacher,
        prompts,
        tok,
        tmp_path,
        1.0,
        12,
        8,
        0,
        torch.device("cpu"),
        Callbacks(),
        stop_at_eos=stop_at_eos,
    )
    if stop_at_eos:  # each completion is cut before its first end of text
        assert all(tok.eos_id not in c and len(c) < 12 for c in out)
    else:  # max_tokens each, ends of text inside
        assert all(len(c) == 12 for c in out)
        assert sum(c.count(tok.eos_id) for c in out) > 16


def test_a_model_folder_on_disk_is_not_read_through_links(corpus, tmp_path):
    from kdcore.errors import CheckpointError

    folder = tmp_path / "linked"
    folder.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1}))
    (folder / "config.json").symlink_to(outside / "config.json")
    with pytest.raises(CheckpointError, match="it has no config.json"):
        read_model_folder(folder)
    (folder / "config.json").unlink()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1}))
    (folder / "tokenizer.json").symlink_to(corpus[1])  # a real tokenizer, behind a link
    (folder / "model.safetensors").symlink_to(outside / "config.json")
    found = read_model_folder(folder)
    assert found.config["n_layer"] == 1
    assert found.tokenizer is None and found.weights is None  # neither followed


def test_a_language_model_teacher_near_a_uniform_guess_fails_before_training(corpus, tmp_path):
    """Text preflight (kdcore.text.preflight): a teacher folder whose weights are random
    scores about its vocabulary's size in perplexity; the job fails before any step,
    saying why, unless teacher_check is "warn". The trained teacher passes."""
    import shutil

    from safetensors.torch import save_file

    from kdcore.errors import TeacherCheckError
    from tests.support.stops import CountSteps

    trained = tmp_path / "trained"
    kdcore.train(_spec(corpus, tmp_path), trained)
    noise = tmp_path / "noise"
    noise.mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(trained / name, noise / name)
    g = torch.Generator().manual_seed(0)
    weights = load_file(trained / "model.safetensors")
    save_file(
        {k: (torch.randn(v.shape, generator=g) * 0.02).to(v.dtype) for k, v in weights.items()},
        noise / "model.safetensors",
    )
    spec = _spec(corpus, tmp_path, kind="distill", distillation={"method": "forward_kl"})
    spec["training"]["epochs"] = 1
    steps = CountSteps()
    with pytest.raises(TeacherCheckError) as caught:
        kdcore.distill(
            {**spec, "teacher": {"arch": GPT2, "checkpoint": str(noise)}},
            tmp_path / "refused",
            callbacks=steps,
        )
    message = str(caught.value)
    assert "near a uniform guess" in message and 'teacher_check to "warn"' in message
    assert steps.steps == 0
    warned = kdcore.distill(
        {
            **spec,
            "teacher": {"arch": GPT2, "checkpoint": str(noise)},
            "distillation": {"method": "forward_kl", "teacher_check": "warn"},
        },
        tmp_path / "warned",
    )
    check = warned["teacher_preflight"]
    assert check["passed"] is False and check["perplexity"] > check["threshold_perplexity"]
    good = kdcore.distill(
        {**spec, "teacher": {"arch": GPT2, "checkpoint": str(trained)}}, tmp_path / "good"
    )
    assert good["teacher_preflight"]["passed"] is True
    assert good["teacher_preflight"]["perplexity"] < good["teacher_preflight"]["vocab_size"]
