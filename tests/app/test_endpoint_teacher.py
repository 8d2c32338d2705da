"""A teacher behind an OpenAI-compatible server, through the service (issue 33, item 1):
the tenant stores the server's key as a write-only credential, a job names it, the
worker checks the URL against the egress policy again and pins the approved address,
hands the key to the training as a file for the attempt only, and the job reports its
`generating` stage before training. The key appears in no answer, event, log, report,
job folder or database column. The server is a real one on loopback (tests/support)."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest
from pydantic import ValidationError

import kdcore
from app.services.credentials import MAX_SECRET_BYTES
from tests.app.conftest import build_api, in_process, make_settings
from tests.support.openai_server import OpenAIServer
from tests.support.procs import training_children, wait_until
from tests.support.text import (
    GPT2_STUDENT,
    GPT2_TEACHER,
    train_tokenizer,
    write_corpus,
    write_prompts,
)
from worker.supervisor import claim_and_run

GPT2 = "hf:GPT2LMHeadModel"
KEY = "sk-live-7d1f0a93c2be4e58a6f0"
TRAINING = {"epochs": 1, "batch_size": 8, "optimizer": "adamw", "lr": 3e-3, "precision": "fp32"}


def _upload(api, path: Path, purpose: str) -> str:
    with open(path, "rb") as fh:
        answer = api.post(
            "/v1/files", files={"file": (path.name, fh.read())}, data={"purpose": purpose}
        )
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


def _student_folder(tmp: Path, tokenizer: Path) -> Path:
    """An untrained student as a model folder (its tokenizer inside): where the service
    reads a text job's tokenizer from when the teacher is a server."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from kdcore.text.tokens import load_tokenizer

    vocab = load_tokenizer(tokenizer).vocab_size
    folder = tmp / "student"
    GPT2LMHeadModel(GPT2Config(vocab_size=vocab, **GPT2_STUDENT)).save_pretrained(folder)
    archive = tmp / "student.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(folder / "config.json", "config.json")
        zf.write(folder / "model.safetensors", "model.safetensors")
        zf.write(tokenizer, "tokenizer.json")
    return archive


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A small teacher served on loopback with a key; a student folder and 24 prompts
    uploaded; the service allows the loopback endpoint (KD_ENDPOINT_ALLOW)."""
    tmp = tmp_path_factory.mktemp("endpoint")
    tokenizer = train_tokenizer(write_corpus(tmp / "corpus.txt", documents=300), tmp / "tok.json")
    answers = write_prompts(tmp / "answers.jsonl", count=400, seed=0)
    kdcore.train(
        {
            "kind": "train",
            "task": "causal_lm",
            "student": {"arch": GPT2, "config": GPT2_TEACHER},
            "dataset": {
                "name": "text",
                "path": str(answers),
                "seq_len": 32,
                "tokenizer": str(tokenizer),
            },
            "training": {**TRAINING, "epochs": 2},
        },
        tmp / "teacher",
    )
    gen = build_api(make_settings(tmp, endpoint_allow="127.0.0.1"))
    api = next(gen)
    student = _upload(api, _student_folder(tmp, tokenizer), "checkpoint")
    prompts = _upload(api, write_prompts(tmp / "prompts.jsonl", count=24, seed=5), "dataset")
    with OpenAIServer(tmp / "teacher", key=KEY) as server:
        yield api, server, student, prompts
    gen.close()


def _spec(world, **endpoint) -> dict:
    api, server, student, prompts = world
    return {
        "kind": "distill",
        "task": "causal_lm",
        "teacher": {"endpoint": {"url": server.url, "model": "tiny-gpt2", **endpoint}},
        "student": {"arch": GPT2, "checkpoint": student},
        "dataset": {"name": "text", "path": prompts, "seq_len": 32},
        "distillation": {
            "method": "sequence",
            "samples_per_prompt": 1,
            "generation_max_tokens": 12,
        },
        "training": TRAINING,
    }


def _put(api, name: str, value: str, tenant: str = "a"):
    return api.request("PUT", f"/v1/credentials/{name}", tenant=tenant, json={"value": value})


def _errors(answer) -> dict[str, str]:
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    return {e["loc"]: e["msg"] for e in answer.json()["errors"]}


def test_credentials_are_write_only_per_tenant_and_encrypted_at_rest(api):
    created = _put(api, "vllm-prod", KEY)
    assert created.status_code == 201 and created.json()["name"] == "vllm-prod"
    assert _put(api, "vllm-prod", KEY + "x").status_code == 200  # replaced
    seen = [
        created,
        api.get("/v1/credentials"),
        api.get("/v1/credentials/vllm-prod"),
        api.get("/openapi.json"),
    ]
    assert [c["name"] for c in seen[1].json()["data"]] == ["vllm-prod"]
    for answer in seen:
        assert answer.status_code == 200 or answer is created
        assert KEY not in answer.text
    assert api.get("/v1/credentials/vllm-prod", tenant="b").status_code == 404
    assert api.get("/v1/credentials", tenant="b").json()["data"] == []
    assert api.delete("/v1/credentials/vllm-prod", tenant="b").status_code == 404
    database = b"".join(p.read_bytes() for p in api.settings.data_dir.glob("kdservice.db*"))
    assert KEY.encode() not in database and b"vllm-prod" in database
    key_file = api.settings.data_dir / "secrets.key"  # the development key, owner only
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert api.delete("/v1/credentials/vllm-prod").status_code == 204
    assert api.get("/v1/credentials/vllm-prod").status_code == 404


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("%%not-base64%%", "is not base64"),
        (base64.b64encode(b"sixteen bytes..!").decode(), "holds 16 bytes; it needs 32"),
        (base64.b64encode(bytes(33)).decode(), "holds 33 bytes; it needs 32"),
    ],
)
def test_a_malformed_secrets_key_stops_the_service_at_start_up(tmp_path, key, why):
    """An operator's mistake is the operator's: the service does not start (it used to
    start, then answer a client's first PUT /v1/credentials with a 409 about it), and
    the message says what is wrong without quoting the key."""
    with pytest.raises(ValidationError) as refused:
        make_settings(tmp_path, secrets_key=key)
    assert why in str(refused.value) and key not in str(refused.value)
    env = {**os.environ, "KD_SECRETS_KEY": key, "KD_DATA_DIR": str(tmp_path / "data")}
    kd = Path(sys.executable).with_name("kd")
    serve = subprocess.run(
        [str(kd), "serve", "--port", "9"], env=env, capture_output=True, text=True, timeout=120
    )
    assert serve.returncode != 0 and why in serve.stderr, serve.stderr
    assert key not in serve.stdout + serve.stderr
    assert not (tmp_path / "data" / "secrets.key").exists()
    good = base64.b64encode(bytes(range(32))).decode()
    assert make_settings(tmp_path, secrets_key=good).secrets_key.get_secret_value() == good


@pytest.mark.parametrize(
    ("name", "body", "status"),
    [
        ("ok", {"value": "two words"}, 422),  # a header value: no spaces
        ("ok", {"value": "line\nbreak"}, 422),
        ("ok", {"value": ""}, 422),
        ("ok", {"value": "k" * (MAX_SECRET_BYTES + 1)}, 422),
        ("ok", {"value": KEY, "tenant": "b"}, 422),  # no other field
        ("..%2Fetc", {"value": KEY}, 404),  # a slash: no such route
        (".hidden", {"value": KEY}, 422),
        ("a" * 65, {"value": KEY}, 422),
    ],
)
def test_bad_credentials_are_refused_and_nothing_is_stored(api, name, body, status):
    answer = api.request("PUT", f"/v1/credentials/{name}", json=body)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert KEY not in answer.text and "line\nbreak" not in answer.text
    assert api.get("/v1/credentials").json()["data"] == []


def test_an_endpoint_must_pass_the_egress_policy_and_name_no_path_or_address(tmp_path):
    """Only resolution happens here: nothing is sent to any of these addresses."""
    gen = build_api(make_settings(tmp_path))  # no KD_ENDPOINT_ALLOW
    api = next(gen)
    spec = {
        "kind": "distill",
        "task": "causal_lm",
        "teacher": {"endpoint": {"url": "", "model": "m"}},
        "student": {"arch": GPT2, "config": GPT2_STUDENT},
        "dataset": {"name": "text", "path": "file_missing", "seq_len": 32},
        "distillation": {"method": "sequence"},
    }
    for url in (
        "http://127.0.0.1:8000/v1",
        "http://169.254.169.254/v1",  # cloud metadata
        "http://10.0.0.7:8000/v1",
        "http://[::1]:8000/v1",
        "http://0x7f000001:8000/v1",
        "http://localhost:8000/v1",
    ):
        spec["teacher"]["endpoint"]["url"] = url
        errors = _errors(api.post("/v1/jobs", json=spec))
        assert "KD_ENDPOINT_ALLOW" in errors["/teacher/endpoint/url"], (url, errors)
    spec["teacher"]["endpoint"] = {
        "url": "http://127.0.0.1:8000/v1",
        "model": "m",
        "api_key_file": "/etc/kdservice/secrets.key",
        "address": "10.0.0.7",
        "credential": "never-stored",
    }
    errors = _errors(api.post("/v1/jobs", json=spec))
    assert "PUT /v1/credentials" in errors["/teacher/endpoint/api_key_file"]
    assert "pins the address" in errors["/teacher/endpoint/address"]
    assert "no credential 'never-stored'" in errors["/teacher/endpoint/credential"]
    assert api.get("/v1/jobs").json()["data"] == []  # nothing was queued
    gen.close()


@pytest.mark.integration
def test_a_job_learns_from_the_endpoint_with_its_stored_key_which_goes_nowhere(world):
    api, server, _, _ = world
    assert _put(api, "teacher-key", KEY).status_code == 201
    before = server.requests
    created = api.post("/v1/jobs", json=_spec(world, credential="teacher-key", concurrency=2))
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    assert api.delete("/v1/credentials/teacher-key").status_code == 409  # in use
    assert claim_and_run(api.settings, job_id) == "succeeded"
    job = api.get(f"/v1/jobs/{job_id}").json()
    stored = (api.settings.jobs_dir / job_id / "generations.jsonl").read_text().splitlines()
    assert server.requests - before == len(stored) > 0  # each training prompt asked once
    assert all(h["Authorization"] == f"Bearer {KEY}" for h in server.headers_seen[before:])
    assert job["report"]["files"]["generations"]["name"] == "generations.jsonl"
    events = api.get(f"/v1/jobs/{job_id}/events", params={"limit": 200}).json()["data"]
    stages = [e["data"].get("stage") for e in events if e["type"] == "progress"]
    assert "generating" in stages and stages[-1] == "training", stages
    # the key: in no answer, event, report, stored spec, job file or log
    texts = [json.dumps(job), json.dumps(events), api.get(f"/v1/jobs/{job_id}/artifacts").text]
    assert not any(KEY in text for text in texts)
    assert job["spec"]["teacher"]["endpoint"]["credential"] == "teacher-key"
    for path in api.settings.data_dir.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    assert list(api.settings.run_secrets_dir.iterdir()) == []  # the attempt's file is gone


@pytest.mark.integration
def test_a_job_distils_token_by_token_from_the_servers_logprobs_and_publishes_them(world):
    api, server, _, _ = world
    _put(api, "scoring-key", KEY)
    spec = _spec(world, credential="scoring-key", logprobs=8)
    spec["distillation"] = {"method": "forward_kl"}
    created = api.post("/v1/jobs", json=spec)
    assert created.status_code == 201, created.text
    before = server.scored_rows
    assert claim_and_run(api.settings, created.json()["id"]) == "succeeded"
    job = api.get(f"/v1/jobs/{created.json()['id']}").json()
    assert job["report"]["teacher_outputs"]["k"] == 8
    assert server.scored_rows - before == job["report"]["teacher_outputs"]["rows"] + 1
    names = {a["name"] for a in api.get(f"/v1/jobs/{job['id']}/artifacts").json()}
    assert "teacher_outputs.zip" in names  # a later job's teacher: {"outputs": its id}
    assert KEY not in json.dumps(job)


@pytest.mark.integration
def test_the_worker_checks_the_url_again_and_refuses_what_is_no_longer_allowed(world):
    api, server, _, _ = world
    created = api.post("/v1/jobs", json=_spec(world))
    assert created.status_code == 201, created.text
    before = server.requests
    stricter = api.settings.model_copy(update={"endpoint_allow": ""})  # policy changed
    assert claim_and_run(stricter, created.json()["id"]) == "failed"
    job = api.get(f"/v1/jobs/{created.json()['id']}").json()
    assert "/teacher/endpoint/url" in job["error"] and "KD_ENDPOINT_ALLOW" in job["error"]
    assert server.requests == before  # nothing was sent


@pytest.mark.integration
@pytest.mark.slow
def test_a_worker_killed_mid_generation_resumes_without_asking_answered_prompts(world):
    """A real training process, SIGKILLed while the server answers: the retried attempt
    asks only the prompts whose answers were not stored (the one in flight at most)."""
    api, server, _, _ = world
    _put(api, "kill-key", KEY)
    spec = _spec(world, concurrency=1, credential="kill-key")
    job_id = api.post("/v1/jobs", json=spec).json()["id"]
    server.delay_s = 0.3  # 17 answers take about 5 s: time to kill it halfway
    settings = in_process(api.settings)
    before = sum(server.asked.values())
    result: dict = {}
    run = threading.Thread(target=lambda: result.update(status=claim_and_run(settings, job_id)))
    run.start()
    stored = settings.jobs_dir / job_id / "generations.jsonl"
    wait_until(
        lambda: stored.exists() and len(stored.read_text().splitlines()) >= 5, 120, "answers"
    )
    (child,) = training_children()
    os.kill(child, signal.SIGKILL)
    run.join(60)
    assert result["status"] == "queued"
    kept = len(stored.read_text().splitlines())
    assert claim_and_run(settings, job_id) == "succeeded"
    server.delay_s = 0.0
    asked = sum(server.asked.values()) - before
    answered = [json.loads(line)["index"] for line in stored.read_text().splitlines()]
    assert sorted(answered) == list(range(len(answered)))  # each prompt answered once
    # the stored answers were not asked again: at most the request in flight was
    assert kept >= 5 and len(answered) <= asked <= len(answered) + 1
    assert training_children() == [] and list(settings.run_secrets_dir.iterdir()) == []
