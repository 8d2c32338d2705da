"""A causal-LM teacher behind an OpenAI-compatible server (kdcore.text.endpoint): a
loopback server the test starts, serving a model the test trained, answers the job's
prompts; the student learns from the answers (sequence-level KD). Answers are stored as
they arrive, so a stopped job resumes without asking again; retries, the request
budget and a refused key end in clear errors; the key is written nowhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import kdcore
from kdcore.checks.validate import parse_spec
from kdcore.errors import Cancelled, SpecError
from kdcore.text.endpoint import EndpointError
from tests.support.openai_server import OpenAIServer
from tests.support.stops import StopBeforeStep
from tests.support.text import (
    GPT2_STUDENT,
    GPT2_TEACHER,
    train_tokenizer,
    write_corpus,
    write_prompts,
)

GPT2 = "hf:GPT2LMHeadModel"
KEY = "sk-test-5f0c1e9d2b7a4c3e8f61"
TRAINING = {"batch_size": 4, "optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.0}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A teacher trained well on 3,000 answers (its tokenizer on a corpus, as
    tests/app/test_language_models.py's), its folder served; the jobs distil on 80
    {"prompt", "completion"} records (the hosted services' case: a server answers
    prompts)."""
    tmp = tmp_path_factory.mktemp("endpoint")
    tokenizer = train_tokenizer(write_corpus(tmp / "big.txt", documents=1500), tmp / "tok.json")
    answers = write_prompts(tmp / "answers.jsonl", count=3000, seed=0)  # it learns to answer
    spec = {
        "kind": "train",
        "task": "causal_lm",
        "student": {"arch": GPT2, "config": GPT2_TEACHER},
        "dataset": {
            "name": "text",
            "path": str(answers),
            "seq_len": 32,
            "tokenizer": str(tokenizer),
        },
        "training": {**TRAINING, "batch_size": 16, "epochs": 6, "device": "cpu"},
    }
    kdcore.train(spec, tmp / "teacher")
    prompts = write_prompts(tmp / "prompts.jsonl", count=80, seed=5)
    return tmp / "teacher", prompts, tokenizer


def _spec(teacher, url: str, **endpoint) -> dict:
    _, prompts, tokenizer = teacher
    return {
        "kind": "distill",
        "task": "causal_lm",
        "teacher": {"endpoint": {"url": url, "model": "tiny-gpt2", **endpoint}},
        "student": {"arch": GPT2, "config": GPT2_STUDENT},
        "dataset": {
            "name": "text",
            "path": str(prompts),
            "seq_len": 32,
            "tokenizer": str(tokenizer),
        },
        "distillation": {
            "method": "sequence",
            "samples_per_prompt": 4,
            "generation_max_tokens": 24,
        },
        "training": {**TRAINING, "epochs": 30, "device": "cpu"},
        "baseline": True,
    }


def _answers(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]


@pytest.mark.slow(seconds=155)
def test_the_servers_answers_teach_a_student_that_beats_the_student_alone(teacher, tmp_path):
    key_file = tmp_path / "secrets" / "teacher_key"
    key_file.parent.mkdir()
    key_file.write_text(KEY + "\n")
    with OpenAIServer(teacher[0], key=KEY) as server:
        spec = _spec(teacher, server.url, api="chat", api_key_file=str(key_file))
        report = kdcore.distill(spec, tmp_path / "job")
    answers = _answers(tmp_path / "job")
    assert len(answers) == sum(server.asked.values()) == server.requests  # each asked once
    assert report["files"]["generations"]["name"] == "generations.jsonl"
    assert report["student"]["perplexity"] < report["baseline"]["perplexity"], report
    assert all(h.get("Authorization") == f"Bearer {KEY}" for h in server.headers_seen)
    for path in (tmp_path / "job").rglob("*"):  # the key went in headers only
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


@pytest.mark.slow
def test_a_stopped_job_resumes_without_asking_an_answered_prompt_again(teacher, tmp_path):
    with OpenAIServer(teacher[0]) as server:
        spec = _spec(teacher, server.url, concurrency=1)
        spec["training"]["epochs"], spec["baseline"] = 1, False
        with pytest.raises(Cancelled, match="while generating, 5 answered"):
            kdcore.distill(spec, tmp_path / "job", callbacks=StopBeforeStep(4))
        assert len(_answers(tmp_path / "job")) == 5
        with open(tmp_path / "job/generations.jsonl", "a") as fh:
            fh.write('{"index": 5, "prompt": "torn')  # killed mid-write: dropped, asked again
        report = kdcore.distill(spec, tmp_path / "job")
    answers = _answers(tmp_path / "job")
    assert sorted(a["index"] for a in answers) == list(range(len(answers)))
    assert server.requests == len(answers)  # the 5 stored answers were not asked for again
    assert report["dataset"]["train"] > 0


@pytest.mark.slow
def test_failures_are_retried_and_a_spent_budget_keeps_what_was_answered(teacher, tmp_path):
    with OpenAIServer(teacher[0], fail_first=2) as server:
        spec = _spec(teacher, server.url, concurrency=1, retries=2, max_requests=6)
        with pytest.raises(EndpointError, match=r"budget \(6\) is spent: 4 of \d+ prompts"):
            kdcore.distill(spec, tmp_path / "job")
        assert server.requests == 6 and len(_answers(tmp_path / "job")) == 4  # 2 x 503, 4 answers
        spec["teacher"]["endpoint"]["max_requests"] = 10_000
        spec["training"]["epochs"], spec["baseline"] = 1, False
        kdcore.distill(spec, tmp_path / "job")
    assert server.requests == 2 + len(_answers(tmp_path / "job"))  # no answer asked twice


@pytest.mark.slow
def test_a_refused_key_fails_the_job_with_the_servers_reason_and_never_the_key(teacher, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("sk-wrong-0000")
    with OpenAIServer(teacher[0], key=KEY) as server:
        spec = _spec(teacher, server.url, api_key_file=str(key_file))
        with pytest.raises(EndpointError) as err:
            kdcore.distill(spec, tmp_path / "job")
        assert "HTTP 401 (Incorrect API key provided)" in str(err.value)
        assert "sk-wrong" not in str(err.value) and server.asked.total() == 0
        refused = server.requests  # the requests in flight when the first 401 came back
        assert 1 <= refused <= 4
        for content, why in (
            (b"", "holds no single-line key"),
            (b"sk-a\nsk-b", "single-line"),
            (b"\xff\xfe", "cannot be read as ASCII"),
        ):
            key_file.write_bytes(content)  # refused before any request, never quoted
            with pytest.raises(EndpointError, match=why) as err:
                kdcore.distill(spec, tmp_path / "job")
            assert "sk-" not in str(err.value)
        key_file.unlink()
        with pytest.raises(EndpointError, match="cannot be read"):
            kdcore.distill(spec, tmp_path / "job")
    assert server.requests == refused


@pytest.mark.slow
def test_an_oversized_reply_is_cut_off_and_fails_the_job(teacher, tmp_path):
    with OpenAIServer(teacher[0], pad_reply=2 << 20) as server:
        spec = _spec(teacher, server.url, concurrency=1)
        with pytest.raises(EndpointError, match="reply is over 1048576 bytes: 0 of"):
            kdcore.distill(spec, tmp_path / "job")
    assert server.requests == 1  # not retried: a reply that size is no transient fault


@pytest.mark.slow
def test_an_unreachable_endpoint_fails_after_its_retries(teacher, tmp_path):
    import socket

    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = _spec(teacher, f"http://127.0.0.1:{port}/v1", retries=1, timeout_s=2)
    with pytest.raises(EndpointError, match="did not answer .* after 2 tries: 0 of"):
        kdcore.distill(spec, tmp_path / "job")


@pytest.mark.slow
def test_an_address_pins_where_requests_go_and_keeps_the_urls_host_name(teacher, tmp_path):
    """endpoint.address (what the service sets after its egress check): the host name
    is never looked up (.invalid does not resolve), the request goes to the address,
    and the server sees the url's name in its Host header."""
    with OpenAIServer(teacher[0]) as server:
        port = server.url.split(":")[2].split("/")[0]
        url = f"http://teacher.invalid:{port}/v1"
        spec = _spec(teacher, url, address="127.0.0.1", concurrency=1)
        spec["training"]["epochs"], spec["baseline"] = 1, False
        kdcore.distill(spec, tmp_path / "job")
    assert server.requests == len(_answers(tmp_path / "job")) > 0
    assert {h["Host"] for h in server.headers_seen} == {f"teacher.invalid:{port}"}


@pytest.mark.slow
def test_a_credential_name_without_a_key_file_fails_before_any_request(teacher, tmp_path):
    with OpenAIServer(teacher[0]) as server:
        spec = _spec(teacher, server.url, credential="vllm-prod")
        with pytest.raises(EndpointError, match="names a key stored in the service"):
            kdcore.distill(spec, tmp_path / "job")
    assert server.requests == 0


def _logprob_spec(teacher, url: str, **endpoint) -> dict:
    spec = _spec(teacher, url, logprobs=16, **endpoint)
    spec["distillation"] = {"method": "forward_kl", "temperature": 1.0}
    spec["training"]["epochs"] = 12
    return spec


@pytest.mark.slow
def test_the_servers_logprobs_teach_a_student_token_by_token(teacher, tmp_path):
    """endpoint.logprobs: the server's top-16 over every training row, stored as the
    teacher store, trains the student with forward KL; the store is published."""
    with OpenAIServer(teacher[0]) as server:
        report = kdcore.distill(_logprob_spec(teacher, server.url), tmp_path / "job")
    rows = report["teacher_outputs"]["rows"]
    assert server.scored_rows == rows + 1 == report["dataset"]["train"] + 1  # + the check
    assert report["teacher_outputs"]["k"] == 16
    assert report["files"]["teacher_outputs"]["name"] == "teacher_outputs.zip"
    assert report["student"]["perplexity"] < report["baseline"]["perplexity"], report


@pytest.mark.slow
def test_a_stopped_logprob_job_resumes_asking_only_the_rows_not_stored(teacher, tmp_path):
    with OpenAIServer(teacher[0]) as server:
        spec = _logprob_spec(teacher, server.url, concurrency=1)
        spec["training"]["epochs"], spec["baseline"] = 1, False
        with pytest.raises(Cancelled, match="while generating, 5 answered"):
            kdcore.distill(spec, tmp_path / "job", callbacks=StopBeforeStep(4))
        assert server.scored_rows == 1 + 5  # the tokenizer check, 5 rows
        report = kdcore.distill(spec, tmp_path / "job")
    rows = report["teacher_outputs"]["rows"]
    assert server.scored_rows == 2 + rows  # two checks; no row scored twice


@pytest.mark.slow
def test_a_server_with_another_tokenizer_or_token_text_is_refused_before_any_row(teacher, tmp_path):
    from kdcore.errors import DataError

    other = train_tokenizer(
        write_corpus(tmp_path / "other.txt", documents=200), tmp_path / "o.json", vocab_size=280
    )
    with OpenAIServer(teacher[0], tokenizer=other) as server:
        with pytest.raises(DataError, match="tokenizes the job's text differently"):
            kdcore.distill(_logprob_spec(teacher, server.url), tmp_path / "job")
        assert server.scored_rows == 1
    with OpenAIServer(teacher[0], token_text=True) as server:
        with pytest.raises(EndpointError, match="return_tokens_as_token_ids"):
            kdcore.distill(_logprob_spec(teacher, server.url), tmp_path / "job2")
        assert server.scored_rows == 1


@pytest.mark.parametrize(
    ("endpoint", "change", "pointer"),
    [
        ({"url": "file:///etc/passwd"}, {}, "/teacher/endpoint/url"),
        ({"url": "http://user:pw@127.0.0.1:1/v1"}, {}, "/teacher/endpoint/url"),
        ({"api_key": "sk-live-abc"}, {}, "/teacher/endpoint"),  # a key in a spec: unknown
        ({"max_requests": 0}, {}, "/teacher/endpoint/max_requests"),
        ({"address": "metadata.internal"}, {}, "/teacher/endpoint/address"),
        ({"credential": "../../etc/key"}, {}, "/teacher/endpoint/credential"),
        ({"logprobs": 0}, {}, "/teacher/endpoint/logprobs"),
        ({"logprobs": 8}, {}, "/distillation/method"),  # logprobs: a token-level method
        (
            {"logprobs": 8},
            {"distillation": {"method": "forward_kl", "teacher_topk": 16}},
            "/distillation/teacher_topk",
        ),
        ({}, {"distillation": {"method": "forward_kl"}}, "/distillation/method"),
        ({}, {"task": "classification", "dataset": {"name": "digits"}}, "/teacher/endpoint"),
    ],
)
def test_endpoint_specs_that_cannot_run_are_refused_where_they_go_wrong(endpoint, change, pointer):
    spec = {
        "kind": "distill",
        "task": "causal_lm",
        "teacher": {"endpoint": {"url": "http://127.0.0.1:1/v1", "model": "m", **endpoint}},
        "student": {"arch": GPT2, "config": GPT2_STUDENT},
        "dataset": {"name": "text", "path": "corpus.txt"},
        "distillation": {"method": "sequence"},
        **change,
    }
    with pytest.raises(SpecError) as err:
        parse_spec(spec)
    assert any(p.startswith(pointer) for p, _ in err.value.errors), err.value.errors


def _scored(tops: list) -> dict:
    return {"choices": [{"logprobs": {"tokens": [], "top_logprobs": [None, *tops]}}]}


@pytest.mark.parametrize(
    ("reply", "why"),
    [
        ({"choices": []}, "no choices\\[0\\].logprobs"),
        (_scored([]), "logprobs for 1 positions of a 2-token prompt"),
        (_scored([{"token_id:1": -0.1}, {"token_id:2": -0.2}]), "gave 1 logprobs at a position"),
        (_scored([{"token_id:1": -0.1, "token_id:9999": -1}] * 2), "beyond the vocabulary"),
        (_scored([{"token_id:1": -0.1, "hello": -1.0}] * 2), "return_tokens_as_token_ids"),
        (_scored([{"token_id:1": 5.0, "token_id:2": -1.0}] * 2), "not log-probabilities"),
        (_scored([{"token_id:1": float("nan"), "token_id:2": -1.0}] * 2), "not log-prob"),
    ],
)
def test_a_hostile_or_broken_logprob_reply_is_refused_saying_why(reply, why):
    """What a server sends back for a row is checked before it enters the store."""
    from kdcore.text.endpoint_logprobs import _row_outputs

    with pytest.raises(EndpointError, match=why):
        _row_outputs(reply, length=2, k=2, vocab=300)
