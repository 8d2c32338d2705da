"""Security round 2: model folders and configs are sized by the model the worker will
build (its folder's config, its tokenizer's vocabulary, every key that repeats a layer),
and the keys that could fetch or run kernels are refused. Each case was valid before:
a job the worker would then build at tens of billions of parameters, or a validate
call that spent minutes of the API's CPU."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save

from tests.security.conftest import Server
from tests.support.text import GPT2_STUDENT, GPT2_TEACHER, train_tokenizer, write_corpus

pytestmark = pytest.mark.integration

# a ViT of about 29e9 parameters: 48 layers of width 7,168 (each ~617M)
HUGE_VIT = {
    "hidden_size": 7168,
    "num_hidden_layers": 48,
    "num_attention_heads": 56,
    "intermediate_size": 28672,
    "patch_size": 4,
}
# a GPT-2 of about 52e9 parameters
HUGE_GPT2 = {"n_layer": 64, "n_embd": 8192, "n_head": 64, "n_positions": 1024}


def folder_zip(config: dict, tokenizer: bytes | None = None, extra: dict | None = None) -> bytes:
    """A model folder as a user zips one; the weights a token tensor (the upload checks
    that they read as safetensors; the size comes from the config)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("model/config.json", json.dumps(config))
        zf.writestr("model/model.safetensors", save({"w": np.zeros((2, 2), np.float32)}))
        if tokenizer is not None:
            zf.writestr("model/tokenizer.json", tokenizer)
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return out.getvalue()


def upload(client, content: bytes, purpose: str, name: str) -> str:
    r = client.post("/v1/files", files={"file": (name, content)}, data={"purpose": purpose})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def errors(client, spec: dict) -> list[dict]:
    r = client.post("/v1/jobs/validate", json=spec)
    assert r.status_code == 200, r.text
    return r.json()["errors"]


@pytest.fixture(scope="module")
def npz_set(server: Server, tmp_path_factory) -> str:
    rng = np.random.default_rng(0)
    out = io.BytesIO()
    np.savez(out, x=rng.random((64, 3, 32, 32), dtype=np.float32), y=rng.integers(0, 4, 64))
    return upload(server.client(), out.getvalue(), "dataset", "set.npz")


@pytest.fixture(scope="module")
def corpus(server: Server, tmp_path_factory) -> tuple[str, Path]:
    folder = tmp_path_factory.mktemp("text")
    path = write_corpus(folder / "corpus.txt", documents=40)
    return upload(server.client(), path.read_bytes(), "dataset", "corpus.txt"), folder


def image_spec(teacher: dict, dataset: dict) -> dict:
    return {
        "name": "sized",
        "kind": "distill",
        "teacher": teacher,
        "student": {"arch": "small_cnn"},
        "dataset": dataset,
        "distillation": {"method": "kd"},
        "training": {"epochs": 1},
    }


def text_spec(teacher: dict, student: dict, data: str) -> dict:
    return {
        "name": "sized-lm",
        "kind": "distill",
        "task": "causal_lm",
        "teacher": teacher,
        "student": student,
        "dataset": {"name": "text", "path": data, "seq_len": 32},
        "distillation": {"method": "forward_kl"},
        "training": {"epochs": 1},
    }


def test_a_model_folder_is_sized_by_its_config_on_any_dataset(server: Server, npz_set: str):
    client = server.client()
    folder = upload(client, folder_zip(HUGE_VIT), "checkpoint", "vit.zip")
    teacher = {"arch": "hf:ViTForImageClassification", "checkpoint": folder}
    found = errors(client, image_spec(teacher, {"name": "npz", "path": npz_set}))
    teacher_errors = [e["msg"] for e in found if e["loc"] == "/teacher"]
    assert len(teacher_errors) == 1 and "29,6" in teacher_errors[0], found  # 29.6e9
    assert "over the limit" in teacher_errors[0]


def test_a_language_model_folder_is_sized_by_its_config(server: Server, corpus):
    client = server.client()
    data, folder = corpus
    tok = train_tokenizer(folder / "corpus.txt", folder / "tok.json").read_bytes()
    teacher = upload(client, folder_zip(HUGE_GPT2, tok), "checkpoint", "gpt2.zip")
    found = errors(
        client,
        text_spec(
            {"arch": "hf:GPT2LMHeadModel", "checkpoint": teacher},
            {"arch": "hf:GPT2LMHeadModel", "config": GPT2_STUDENT},
            data,
        ),
    )
    assert any(e["loc"] == "/teacher/config" and "parameters" in e["msg"] for e in found), found


def test_the_student_is_sized_with_the_teachers_tokenizer(server: Server, corpus):
    """A tokenizer of 1.2M tokens: the student's embedding (and head) take its size at
    build time, so they are sized with it (not with GPT-2's 50,257): 1.2M x 256 is 307M
    parameters, over the 200M limit; at 50,257 the same student is 14M."""
    client = server.client()
    data, _ = corpus
    vocab = {"<|endoftext|>": 0, **{f"t{i}": i + 1 for i in range(1_200_000)}}
    tokenizer = {
        "version": "1.0",
        "added_tokens": [],
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<|endoftext|>"},
    }
    small = {**GPT2_TEACHER, "n_embd": 32, "n_head": 4}
    teacher = upload(
        client, folder_zip(small, json.dumps(tokenizer).encode()), "checkpoint", "big-vocab.zip"
    )
    found = errors(
        client,
        text_spec(
            {"arch": "hf:GPT2LMHeadModel", "checkpoint": teacher},
            {"arch": "hf:GPT2LMHeadModel", "config": {**GPT2_STUDENT, "n_embd": 256}},
            data,
        ),
    )
    assert any(e["loc"] == "/student/config" and "parameters" in e["msg"] for e in found), found


@pytest.mark.parametrize(
    "config",
    [
        {**GPT2_STUDENT, "n_layer": 300},
        {**GPT2_STUDENT, "n_layer": 16000},
        {**GPT2_STUDENT, "attn_implementation": "kernels-community/flash-attn"},
        {**GPT2_STUDENT, "quantization_config": {"quant_method": "bitsandbytes"}},
    ],
    ids=["n_layer-300", "n_layer-16000", "hub-kernels", "quantization"],
)
def test_config_keys_that_repeat_layers_or_load_kernels_are_refused(server, corpus, config):
    client = server.client()
    data, _ = corpus
    spec = text_spec(
        {"arch": "hf:GPT2LMHeadModel", "config": GPT2_TEACHER},
        {"arch": "hf:GPT2LMHeadModel", "config": config},
        data,
    )
    r = client.post("/v1/jobs/validate", json=spec)
    assert r.status_code in (200, 422), r.text  # never a 500, and answered at once
    body = r.json()
    found = body.get("errors") or body.get("errors", [])
    assert found and any("/student" in e["loc"] for e in found), body


def test_attention_kernels_are_refused_by_the_layers_route(server: Server):
    r = server.client().post(
        "/v1/architectures/layers",
        json={
            "arch": "hf:ViTForImageClassification",
            "config": {
                "hidden_size": 32,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "attn_implementation": "kernels-community/flash-attn",
            },
            "input_shape": [3, 32, 32],
            "num_classes": 4,
        },
    )
    assert r.status_code == 422, r.text
    assert "built-in" in r.text


def test_a_folder_with_two_configs_is_refused(server: Server, npz_set: str):
    """A small config.json and a large sub/config.json: sized by one, built by the other."""
    client = server.client()
    tiny = {
        **HUGE_VIT,
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 32,
    }
    content = folder_zip(tiny, extra={"config.json": json.dumps(HUGE_VIT)})
    r = client.post(
        "/v1/files", files={"file": ("two.zip", content)}, data={"purpose": "checkpoint"}
    )
    assert r.status_code == 422, r.text
    assert "config.json twice" in r.text


def _rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) * 1024


def test_listing_layers_builds_nothing_real(server: Server):
    """Security round 2: /v1/architectures/layers built the real model and ran a forward
    pass in the API (vgg16 at 224 px: +490-632 MiB a call). On the meta device, three
    calls grow the API by under 64 MiB."""
    client = server.client()
    body = {"arch": "vgg16", "input_shape": [3, 224, 224], "num_classes": 1000}
    warm = client.post("/v1/architectures/layers", json={**body, "arch": "small_cnn"})
    assert warm.status_code == 200, warm.text  # imports, the registry: once per process
    pid = server.proc.popen.pid
    before = _rss(pid)
    for _ in range(3):
        r = client.post("/v1/architectures/layers", json=body)
        assert r.status_code == 200, r.text
        assert r.json()[-1]["shape"] == ["N", 1000]
    assert _rss(pid) - before < 64 * 1024**2
