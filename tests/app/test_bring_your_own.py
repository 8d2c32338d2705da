"""Models from outside the registries, through the service: uploads are checked,
jobs are validated against the data, and they run in a real training process."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.app.conftest import build_api, make_settings
from tests.support import graphs
from worker.supervisor import claim_and_run

pytestmark = pytest.mark.integration  # real training processes

DIGITS = {"builtin": "digits", "max_samples": 400}


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    gen = build_api(make_settings(tmp_path_factory.mktemp("byo")))
    yield next(gen)
    gen.close()


def _upload(api, path: Path, purpose: str = "checkpoint"):
    with open(path, "rb") as fh:
        return api.post(
            "/v1/files", files={"file": (path.name, fh.read())}, data={"purpose": purpose}
        )


def test_an_onnx_teacher_from_a_custom_module_distils_into_a_registry_student(api, tmp_path):
    torch.manual_seed(0)
    path = graphs.export_graph(graphs.CustomNet(1, 10), tmp_path / "custom.onnx", (1, 8, 8))
    up = _upload(api, path)
    assert up.status_code == 201, up.text
    spec = {
        "name": "onnx-teacher",
        "kind": "distill",
        "teacher": {"checkpoint": up.json()["id"]},
        "student": {"arch": "small_cnn"},
        "dataset": DIGITS,
        # the graph's weights are random (mechanics): its preflight is recorded, not failed
        "distillation": {"method": "kd", "teacher_check": "warn"},
        "training": {"epochs": 1, "batch_size": 32, "precision": "fp32"},
    }
    misfit = {**spec, "dataset": {**DIGITS, "image_size": 12}}
    r = api.post("/v1/jobs", json=misfit)
    assert r.status_code == 422, r.text
    error = r.json()["errors"][0]
    assert error["loc"] == "/teacher/checkpoint" and "(N, 1, 8, 8)" in error["msg"]
    r = api.post(
        "/v1/jobs", json={**spec, "distillation": {"method": "at", "teacher_check": "warn"}}
    )
    assert r.status_code == 422 and "only its output" in r.json()["errors"][0]["msg"]
    job = api.post("/v1/jobs", json=spec)
    assert job.status_code == 201, job.text
    assert claim_and_run(api.settings, job.json()["id"]) == "succeeded"
    report = api.get(f"/v1/jobs/{job.json()['id']}").json()["report"]
    assert report["teacher"]["arch"] == "onnx" and report["student"]["arch"] == "small_cnn"


@pytest.mark.parametrize(("craft", "reason"), graphs.HOSTILE)
def test_hostile_onnx_uploads_are_refused_and_not_kept(api, tmp_path, craft, reason):
    before = api.get("/v1/files").json()["data"]
    r = _upload(api, craft(tmp_path / "x.onnx"))
    assert r.status_code == 422, r.text
    assert reason in r.json()["detail"]
    assert api.get("/v1/files").json()["data"] == before


def test_a_torch_export_archive_upload_is_refused_with_the_way_out(api, tmp_path):
    program = torch.export.export(
        torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)),
        (torch.randn(2, 1, 8, 8),),
    )
    path = tmp_path / "model.pt2"
    torch.export.save(program, str(path))
    r = _upload(api, path)
    assert r.status_code == 422 and "ONNX instead" in r.json()["detail"]


def test_a_student_initialised_from_a_checkpoint_with_its_head_reset(api, tmp_path):
    from safetensors.torch import save_file

    from kdcore.models import build_model

    torch.manual_seed(2)
    path = tmp_path / "imagenet-like.safetensors"  # pretrained elsewhere for 7 classes
    save_file(build_model("small_cnn", 7, (1, 8, 8)).state_dict(), str(path))
    up = _upload(api, path)
    assert up.status_code == 201, up.text
    spec = {
        "name": "warm-student",
        "kind": "distill",
        "teacher": {"arch": "small_cnn_wide"},
        "student": {"arch": "small_cnn", "checkpoint": up.json()["id"]},
        "dataset": DIGITS,
        "training": {"epochs": 1, "batch_size": 32, "precision": "fp32"},
    }
    r = api.post("/v1/jobs", json=spec)
    assert r.status_code == 422 and "fc.weight" in r.json()["errors"][0]["msg"], r.text
    spec["student"]["reset_head"] = True
    job = api.post("/v1/jobs", json=spec)
    assert job.status_code == 201, job.text
    assert claim_and_run(api.settings, job.json()["id"]) == "succeeded"
    student = api.get(f"/v1/jobs/{job.json()['id']}").json()["report"]["student"]
    assert student["initialised_from_checkpoint"] is True and student["reset_head"] is True


def test_a_timm_teacher_distils_into_an_hf_student_through_the_service(api):
    spec = {
        "name": "timm-to-hf",
        "kind": "distill",
        "teacher": {"arch": "timm:resnet10t"},
        "student": {"arch": "hf:ViTForImageClassification", "config": graphs.TINY_VIT},
        "dataset": {**DIGITS, "image_size": 16},
        "training": {"epochs": 1, "batch_size": 32, "precision": "fp32"},
        "export": ["safetensors", "onnx"],
    }
    job = api.post("/v1/jobs", json=spec)
    assert job.status_code == 201, job.text
    assert claim_and_run(api.settings, job.json()["id"]) == "succeeded"
    done = api.get(f"/v1/jobs/{job.json()['id']}").json()
    assert done["report"]["student"]["arch"] == "hf:ViTForImageClassification"
    names = {a["name"] for a in api.get(f"/v1/jobs/{done['id']}/artifacts").json()}
    assert {"student.safetensors", "student.json", "student.onnx"} <= names


def test_an_hf_teacher_folder_distils_into_a_timm_student_with_a_feature_method(api, tmp_path):
    folder = graphs.hf_folder(
        tmp_path / "hf-teacher.zip",
        "hf:ResNetForImageClassification",
        graphs.TINY_HF_RESNET,
        10,
        (1, 16, 16),
    )
    up = _upload(api, folder)
    assert up.status_code == 201, up.text
    spec = {
        "name": "hf-to-timm",
        "kind": "distill",
        "teacher": {"arch": "hf:ResNetForImageClassification", "checkpoint": up.json()["id"]},
        "student": {"arch": "timm:resnet10t"},
        "dataset": {**DIGITS, "image_size": 16},
        "distillation": {
            "method": "fitnet",
            "teacher_layers": ["resnet.encoder.stages.1"],
            "student_layers": ["layer2"],
            "teacher_check": "warn",  # a folder of random weights (mechanics)
        },
        "training": {"epochs": 1, "batch_size": 32, "precision": "fp32"},
    }
    wrong = {**spec, "teacher": {**spec["teacher"], "num_classes": 7}}
    r = api.post("/v1/jobs", json=wrong)
    assert r.status_code == 422 and "classifier" in r.json()["errors"][0]["msg"], r.text
    job = api.post("/v1/jobs", json=spec)
    assert job.status_code == 201, job.text
    assert claim_and_run(api.settings, job.json()["id"]) == "succeeded"
    report = api.get(f"/v1/jobs/{job.json()['id']}").json()["report"]
    assert report["teacher"]["arch"] == "hf:ResNetForImageClassification"
    assert report["history"][-1]["train_losses"]["hint"] > 0


def test_hostile_model_folder_uploads_are_refused(api, tmp_path):
    import json
    import zipfile

    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("config.json", json.dumps({"auto_map": {"AutoModel": "evil.Model"}}))
        zf.writestr("model.safetensors", b"\x00" * 16)
    r = _upload(api, path)
    assert r.status_code == 422 and "no remote code" in r.json()["detail"], r.text


def test_architectures_are_listed_sized_and_their_layers_shown(api):
    caps = api.get("/v1/capabilities").json()
    assert "timm:resnet18" in caps["architectures"] and "small_cnn" in caps["architectures"]
    r = api.get("/v1/architectures", params={"match": "timm:resnet1*", "input_shape": "1,28,28"})
    rows = {row["name"]: row["parameters"] for row in r.json()["data"]}
    assert rows["timm:resnet18"] > 10_000_000 and r.json()["total"] == len(rows)
    r = api.post(
        "/v1/architectures/layers",
        json={"arch": "timm:resnet10t", "input_shape": [1, 28, 28], "num_classes": 10},
    )
    assert r.status_code == 200, r.text
    layer2 = next(row for row in r.json() if row["name"] == "layer2")
    assert layer2["shape"] == ["N", 128, 4, 4]
    r = api.post(
        "/v1/architectures/layers",
        json={
            "arch": "hf:ViTForImageClassification",
            "config": graphs.TINY_VIT,
            "input_shape": [1, 8, 8],
        },
    )
    assert r.status_code == 200 and any(row["name"] == "vit.embeddings" for row in r.json())
    for query in (
        {"input_shape": "0,28,28"},
        {"input_shape": "1,28,28,28"},
        {"input_shape": "a,b"},
        {"input_shape": "1,99999,99999"},
        {"match": "x" * 101},
        {"limit": 0},
    ):
        r = api.get("/v1/architectures", params=query)
        assert r.status_code == 422, (query, r.text)
    for bad in (
        {"arch": "timm:nope", "input_shape": [1, 8, 8]},
        {"arch": "timm:resnet10t", "input_shape": [1, 0, 8]},
        {"arch": "timm:resnet10t", "input_shape": [1, 2, 3, 4]},
        {"arch": "timm:vit_huge_patch14_224", "input_shape": [3, 1024, 1024]},
        {
            "arch": "hf:ViTForImageClassification",
            "config": {"auto_map": {}},
            "input_shape": [1, 8, 8],
        },
    ):
        r = api.post("/v1/architectures/layers", json=bad)
        assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"


def test_a_model_folder_with_an_oversized_tokenizer_is_refused(api, tmp_path):
    import json
    import os
    import zipfile

    path = tmp_path / "big-tokenizer.zip"
    with zipfile.ZipFile(path, "w") as zf:  # stored: the cap, not the bomb check, refuses it
        zf.writestr("config.json", json.dumps({"model_type": "gpt2", "n_layer": 1}))
        zf.writestr("model.safetensors", b"\x00" * 16)
        zf.writestr("tokenizer.json", os.urandom(33 * 1024**2).hex())  # 66 MiB
    before = api.get("/v1/files").json()["data"]
    r = _upload(api, path)
    assert r.status_code == 422 and "tokenizer.json is over" in r.json()["detail"], r.text
    assert api.get("/v1/files").json()["data"] == before  # nothing kept
