"""A teacher's stored top-k outputs through the service (issue 33, item 2): a top-k job
publishes `teacher_outputs.zip`; a later job names it (or an upload of it) as
`teacher: {"outputs": ...}`, builds no teacher, and trains the same student."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

import kdcore
from tests.app.conftest import build_api, make_settings
from tests.support.text import GPT2_STUDENT, GPT2_TEACHER, train_tokenizer, write_corpus
from worker.supervisor import claim_and_run

pytestmark = [pytest.mark.integration]  # real training processes, small jobs

GPT2 = "hf:GPT2LMHeadModel"
TRAINING = {"epochs": 2, "batch_size": 8, "optimizer": "adamw", "lr": 3e-3, "precision": "fp32"}


def _upload(api, path: Path, purpose: str):
    with open(path, "rb") as fh:
        return api.post(
            "/v1/files", files={"file": (path.name, fh.read())}, data={"purpose": purpose}
        )


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """A small teacher (its model folder zipped, tokenizer inside) and a corpus, uploaded."""
    tmp = tmp_path_factory.mktemp("outputs")
    corpus = write_corpus(tmp / "corpus.txt", documents=60)
    tokenizer = train_tokenizer(corpus, tmp / "tokenizer.json")
    spec = {
        "kind": "train",
        "task": "causal_lm",
        "student": {"arch": GPT2, "config": GPT2_TEACHER},
        "dataset": {
            "name": "text",
            "path": str(corpus),
            "seq_len": 32,
            "tokenizer": str(tokenizer),
        },
        "training": {**TRAINING, "epochs": 4},
    }
    kdcore.train(spec, tmp / "teacher")
    with zipfile.ZipFile(tmp / "teacher.zip", "w") as zf:
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            zf.write(tmp / "teacher" / name, name)
    gen = build_api(make_settings(tmp))
    api = next(gen)
    corpus_id = _upload(api, corpus, "dataset").json()["id"]
    teacher_id = _upload(api, tmp / "teacher.zip", "checkpoint").json()["id"]
    yield api, corpus_id, teacher_id, tmp
    gen.close()


def _spec(corpus: str, teacher: dict) -> dict:
    return {
        "kind": "distill",
        "task": "causal_lm",
        "teacher": teacher,
        "student": {"arch": GPT2, "config": GPT2_STUDENT},
        "dataset": {"name": "text", "path": corpus, "seq_len": 32},
        "distillation": {"method": "forward_kl", "teacher_topk": 16},
        "training": TRAINING,
        "baseline": True,
    }


def _run(api, spec: dict) -> dict:
    created = api.post("/v1/jobs", json=spec)
    assert created.status_code == 201, created.text
    assert claim_and_run(api.settings, created.json()["id"]) == "succeeded"
    return api.get(f"/v1/jobs/{created.json()['id']}").json()


def _artifacts(api, job_id: str) -> dict[str, dict]:
    return {a["name"]: a for a in api.get(f"/v1/jobs/{job_id}/artifacts").json()}


@pytest.fixture(scope="module")
def first(service) -> dict:
    api, corpus, teacher, _ = service
    return _run(api, _spec(corpus, {"arch": GPT2, "checkpoint": teacher}))


def test_a_later_job_distils_from_a_jobs_outputs_artifact_into_the_same_student(service, first):
    api, corpus, _, _ = service
    published = _artifacts(api, first["id"])
    store = published["teacher_outputs.zip"]
    second = _run(api, _spec(corpus, {"outputs": store["id"]}))
    report = second["report"]
    assert "teacher" not in report and report["teacher_outputs"]["k"] == 16
    assert report["teacher_outputs"]["bytes_per_token"] < 16 * (2 + 4)
    assert report["student"]["perplexity"] == first["report"]["student"]["perplexity"]
    again = _artifacts(api, second["id"])
    assert again["model.safetensors"]["sha256"] == published["model.safetensors"]["sha256"]
    assert "teacher_outputs.zip" not in again  # named, not made: not published twice


def test_an_uploaded_outputs_file_serves_as_the_teacher_and_other_files_do_not(service, first):
    api, corpus, teacher, tmp = service
    store = _artifacts(api, first["id"])["teacher_outputs.zip"]
    blob = api.get(f"/v1/artifacts/{store['id']}/content")
    assert blob.status_code == 200, blob.text
    (tmp / "mine.zip").write_bytes(blob.content)
    uploaded = _upload(api, tmp / "mine.zip", "teacher_outputs")
    assert uploaded.status_code == 201, uploaded.text
    third = _run(api, _spec(corpus, {"outputs": uploaded.json()["id"]}))
    assert third["report"]["student"]["perplexity"] == first["report"]["student"]["perplexity"]
    # a model folder is not outputs: refused at submission, where it was named
    store_path = str(tmp / "mine.zip")  # a path on the service's disk is no reference
    for wrong in (teacher, _artifacts(api, first["id"])["student_hf.zip"]["id"], store_path):
        refused = api.post("/v1/jobs", json=_spec(corpus, {"outputs": wrong}))
        assert refused.status_code == 422, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert "/teacher/outputs" in refused.text
    # a file that is not outputs is refused when it arrives
    (tmp / "fake.zip").write_bytes(blob.content[:100])
    bad = _upload(api, tmp / "fake.zip", "teacher_outputs")
    assert bad.status_code == 422 and bad.headers["content-type"].startswith(
        "application/problem+json"
    )


def test_a_loopback_teacher_endpoint_is_refused_unless_the_operator_allows_it(service):
    api, corpus, _, _ = service
    spec = _spec(corpus, {"endpoint": {"url": "http://127.0.0.1:9/v1", "model": "m"}})
    spec["distillation"] = {"method": "sequence"}
    refused = api.post("/v1/jobs", json=spec)
    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    errors = refused.json()["errors"]
    assert any(
        e["loc"] == "/teacher/endpoint/url" and "KD_ENDPOINT_ALLOW" in e["msg"] for e in errors
    )
