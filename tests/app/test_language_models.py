"""Language models through the service (issue 17): a tiny GPT-2 teacher trained from a
config on a corpus the test writes (with a BPE tokenizer trained on it by the
`tokenizers` library), uploaded as a model folder, then distilled through the service
into a student with half its layers by each token-level method and by `sequence`. With
each method the student's held-out perplexity is lower than the same student's trained
without the teacher (same data, budget and seed). And a text-classification pair."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

import kdcore
from tests.app.conftest import build_api, make_settings
from tests.support.text import (
    BERT_TINY,
    GPT2_STUDENT,
    GPT2_TEACHER,
    train_tokenizer,
    write_corpus,
    write_labelled,
)
from worker.supervisor import claim_and_run

pytestmark = [pytest.mark.integration, pytest.mark.slow(seconds=140)]  # real training processes

TRAINING = {"batch_size": 4, "optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.0}
GPT2 = "hf:GPT2LMHeadModel"


def _zip_folder(folder: Path, path: Path) -> Path:
    """The teacher's Hugging Face files, as a user uploads a model folder."""
    with zipfile.ZipFile(path, "w") as zf:
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            zf.write(folder / name, f"teacher/{name}")
    return path


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """A teacher trained well on a large corpus; the jobs then distil on a small one
    (where the student's own data is scarce: what distillation is for)."""
    tmp = tmp_path_factory.mktemp("lm")
    big = write_corpus(tmp / "big.txt", documents=1500, seed=0)
    tokenizer = train_tokenizer(big, tmp / "tokenizer.json")
    spec = {
        "kind": "train",
        "task": "causal_lm",
        "student": {"arch": GPT2, "config": GPT2_TEACHER},
        "dataset": {"name": "text", "path": str(big), "seq_len": 64, "tokenizer": str(tokenizer)},
        "training": {**TRAINING, "batch_size": 16, "epochs": 6},
    }
    report = kdcore.train(spec, tmp / "teacher")
    gen = build_api(make_settings(tmp))
    api = next(gen)
    small = write_corpus(tmp / "small.txt", documents=80, seed=5)
    with open(small, "rb") as fh:
        corpus = api.post(
            "/v1/files", files={"file": ("small.txt", fh.read())}, data={"purpose": "dataset"}
        )
    folder = _zip_folder(tmp / "teacher", tmp / "teacher.zip")
    with open(folder, "rb") as fh:
        teacher = api.post(
            "/v1/files", files={"file": ("teacher.zip", fh.read())}, data={"purpose": "checkpoint"}
        )
    assert corpus.status_code == teacher.status_code == 201, (corpus.text, teacher.text)
    yield api, corpus.json()["id"], teacher.json()["id"], report
    gen.close()


def _run(api, spec: dict) -> dict:
    created = api.post("/v1/jobs", json=spec)
    assert created.status_code == 201, created.text
    assert claim_and_run(api.settings, created.json()["id"]) == "succeeded"
    return api.get(f"/v1/jobs/{created.json()['id']}").json()


def _job(corpus: str, teacher: str | None, **distillation) -> dict:
    spec = {
        "task": "causal_lm",
        "kind": "distill" if teacher else "train",
        "student": {"arch": GPT2, "config": GPT2_STUDENT},
        "dataset": {"name": "text", "path": corpus, "seq_len": 64},
        "training": {**TRAINING, "epochs": 30},
    }
    if teacher:
        spec["teacher"] = {"arch": GPT2, "checkpoint": teacher}
        spec["distillation"] = distillation
    return spec


@pytest.fixture(scope="module")
def forward_kl(lm) -> dict:
    """forward_kl with `baseline: true`: the report holds the same student trained
    without the teacher (same tokenizer, data, budget and seed)."""
    api, corpus, teacher, _ = lm
    spec = _job(corpus, teacher, method="forward_kl")
    spec["baseline"] = True
    return _run(api, spec)


def _artifacts(api, job_id: str) -> dict[str, str]:
    return {a["name"]: a["id"] for a in api.get(f"/v1/jobs/{job_id}/artifacts").json()}


def test_forward_kl_beats_the_student_alone_and_writes_a_hugging_face_folder(lm, forward_kl):
    report = forward_kl["report"]
    assert report["baseline"]["perplexity"] > report["student"]["perplexity"]
    # KD gain for a language model: the baseline's perplexity over the student's
    assert report["kd_gain_unit"] == "perplexity_ratio"
    assert report["kd_gain"] == pytest.approx(
        report["baseline"]["perplexity"] / report["student"]["perplexity"], abs=1e-4
    )
    assert report["kd_helped"] is True and report["kd_verdict"].startswith("Distillation helped")
    # the job's figures are the student's, the baseline's its own (it trained last)
    events = lm[0].get(f"/v1/jobs/{forward_kl['id']}/events", params={"limit": 200}).json()
    epochs = [e["data"] for e in events["data"] if e["type"] == "epoch"]
    assert forward_kl["metrics"] == [e for e in epochs if e["model"] == "student"][-1]["metrics"]
    baseline_last = [e for e in epochs if e["model"] == "baseline"][-1]["metrics"]
    assert forward_kl["baseline_metrics"] == baseline_last
    assert forward_kl["progress"]["model"] == "baseline"
    print(
        f"\nFIGURE forward_kl {report['student']['perplexity']:.4f} alone "
        f"{report['baseline']['perplexity']:.4f} teacher {report['teacher']['perplexity']:.4f}"
    )
    names = _artifacts(lm[0], forward_kl["id"])
    assert {"config.json", "model.safetensors", "tokenizer.json", "student_hf.zip"} <= set(names)


def test_a_jobs_model_folder_artifact_is_a_teacher_and_its_bare_weights_are_not(lm, forward_kl):
    """Artifacts serve as inputs where their kind fits: the student's student_hf.zip is
    a teacher as an uploaded folder is; its model.safetensors alone, with no config,
    is refused at validation (it was accepted, then failed in the worker); a report is
    no checkpoint, and the message says what is."""
    api, corpus, _, _ = lm
    names = _artifacts(api, forward_kl["id"])
    spec = _job(corpus, names["student_hf.zip"], method="forward_kl")
    spec["training"]["epochs"] = 1
    verdict = api.post("/v1/jobs/validate", json=spec).json()
    assert verdict["valid"] is True, verdict
    done = _run(api, spec)
    assert done["report"]["teacher"]["perplexity"] == pytest.approx(
        forward_kl["report"]["student"]["perplexity"], rel=0.05
    )  # the teacher is that student
    bare = _job(corpus, names["model.safetensors"], method="forward_kl")
    refused = api.post("/v1/jobs", json=bare)
    assert refused.status_code == 422, refused.text
    (error,) = refused.json()["errors"]
    assert error["loc"] == "/teacher/checkpoint"
    assert "needs a model folder" in error["msg"] and "student_hf.zip" in error["msg"]
    report = _job(corpus, names["report.json"], method="forward_kl")
    (error,) = api.post("/v1/jobs", json=report).json()["errors"]
    assert error["loc"] == "/teacher/checkpoint"
    assert "(report.json) cannot be used as a checkpoint" in error["msg"]
    assert "*_hf.zip" in error["msg"]


@pytest.mark.parametrize("method", ["reverse_kl", "gkd"])
def test_each_token_level_method_beats_the_student_alone(lm, forward_kl, method):
    api, corpus, teacher, _ = lm
    without_kd = forward_kl["report"]["baseline"]["perplexity"]
    report = _run(api, _job(corpus, teacher, method=method))["report"]
    assert report["method"] == method and report["tokenizer"]["identical"] is True
    assert report["student"]["parameters"] < report["teacher"]["parameters"]
    assert report["student"]["perplexity"] < without_kd, (report["student"], without_kd)
    assert 0.5 < report["agreement"] <= 1.0 and report["student"]["tokens_per_s"] > 0
    print(f"\nFIGURE {method} {report['student']['perplexity']:.4f} alone {without_kd:.4f}")


def test_sequence_level_kd_trains_on_the_teachers_generations(lm, forward_kl):
    api, corpus, teacher, _ = lm
    without_kd = forward_kl["report"]["baseline"]["perplexity"]
    spec = _job(
        corpus,
        teacher,
        method="sequence",
        samples_per_prompt=4,
        prompt_tokens=8,
        generation_max_tokens=56,
    )
    job = _run(api, spec)
    report = job["report"]
    assert report["generation"]["file"] == "generations.jsonl"
    assert report["student"]["perplexity"] < without_kd, (report["student"], without_kd)
    assert report["agreement"] > 0.5
    print(f"\nFIGURE sequence {report['student']['perplexity']:.4f} alone {without_kd:.4f}")
    assert "generations.jsonl" in _artifacts(api, job["id"])


def test_a_text_classification_pair_runs_through_the_service(lm, tmp_path):
    api = lm[0]
    data = write_labelled(tmp_path / "labelled.jsonl")
    with open(data, "rb") as fh:
        up = api.post(
            "/v1/files", files={"file": ("labelled.jsonl", fh.read())}, data={"purpose": "dataset"}
        )
    assert up.status_code == 201, up.text
    bert = "hf:BertForSequenceClassification"
    base = {
        "task": "text_classification",
        "dataset": {"name": "text", "path": up.json()["id"], "seq_len": 32},
        "training": {**TRAINING, "batch_size": 16, "epochs": 8},
    }
    teacher_job = _run(
        api,
        {
            **base,
            "kind": "train",
            "student": {"arch": bert, "config": {**BERT_TINY, "num_hidden_layers": 4}},
        },
    )
    assert teacher_job["report"]["student"]["accuracy"] > 0.6
    # the teacher's outputs, zipped by the service, become the next job's teacher
    art = _artifacts(api, teacher_job["id"])["student_hf.zip"]
    blob = api.get(f"/v1/artifacts/{art}/content").content
    up_teacher = api.post(
        "/v1/files", files={"file": ("bert.zip", blob)}, data={"purpose": "checkpoint"}
    )
    assert up_teacher.status_code == 201, up_teacher.text
    job = _run(
        api,
        {
            **base,
            "kind": "distill",
            "teacher": {"arch": bert, "checkpoint": up_teacher.json()["id"]},
            "student": {"arch": bert, "config": BERT_TINY},
            "distillation": {"method": "kd"},
            "export": ["safetensors", "onnx"],
        },
    )
    report = job["report"]
    assert report["task"] == "text_classification"
    # 3 classes: the distilled classifier reads the sentence (chance is 33%), and the
    # teacher passed its preflight before training
    print(
        f"\nFIGURE text classifier: student {report['student']['accuracy']:.3f}, "
        f"teacher {report['teacher']['accuracy']:.3f}"
    )
    assert report["student"]["accuracy"] >= 0.5
    assert report["teacher_preflight"]["passed"] is True
    assert report["onnx_max_abs_error"] < 1e-3
    assert report["student"]["parameters"] < report["teacher"]["parameters"]


def test_a_streamed_text_set_trains_through_the_service(api, tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt", documents=120, seed=7)
    with open(corpus, "rb") as fh:
        up = api.post(
            "/v1/files", files={"file": ("corpus.txt", fh.read())}, data={"purpose": "dataset"}
        )
    assert up.status_code == 201, up.text
    spec = {
        "kind": "train",
        "task": "causal_lm",
        "student": {"arch": GPT2, "config": GPT2_STUDENT},
        "dataset": {"name": "text", "path": up.json()["id"], "seq_len": 32, "streaming": True},
        "training": {**TRAINING, "epochs": 1},
    }
    job = _run(api, spec)
    loading = job["report"]["dataset"]["loading"]
    assert loading["path"] == "streaming" and loading["rows"] > 10
    assert job["report"]["student"]["perplexity"] < job["report"]["tokenizer"]["vocab_size"]
    folder = api.settings.jobs_dir / job["id"]
    assert folder.is_dir() and not (folder / "text_rows").exists()  # removed when done
