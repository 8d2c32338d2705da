import hashlib
import io
import os
import zipfile

import numpy as np
import pytest
import torch
from safetensors.torch import save

from kdcore.models import build_model
from tests.app.conftest import build_api, make_settings
from tests.support.exploits import PickleExploit


def _weights() -> bytes:
    return save(build_model("mlp_small", 3, (1, 6, 6)).state_dict())


def _upload(api, content: bytes, name="teacher.safetensors", purpose="checkpoint", tenant="a"):
    return api.post(
        "/v1/files", tenant=tenant, files={"file": (name, content)}, data={"purpose": purpose}
    )


def test_upload_get_list_delete(api):
    blob = _weights()
    r = _upload(api, blob)
    assert r.status_code == 201, r.text
    f = r.json()
    assert f["sha256"] == hashlib.sha256(blob).hexdigest() and f["bytes"] == len(blob)
    assert r.headers["location"] == f"/v1/files/{f['id']}"
    assert api.get(f"/v1/files/{f['id']}").json() == f
    assert [x["id"] for x in api.get("/v1/files").json()["data"]] == [f["id"]]
    assert api.get(f"/v1/files/{f['id']}", tenant="b").status_code == 404
    assert api.get("/v1/files", tenant="b").json()["data"] == []
    assert api.delete(f"/v1/files/{f['id']}", tenant="b").status_code == 404
    assert api.delete(f"/v1/files/{f['id']}").status_code == 204
    assert api.get(f"/v1/files/{f['id']}").status_code == 404


def test_uploaded_teacher_is_usable_in_a_job_and_protected_while_queued(api):
    f = _upload(api, _weights()).json()
    spec = {
        "kind": "distill",
        "teacher": {"arch": "mlp_small", "checkpoint": f["id"]},
        "student": {"arch": "mlp_small"},
        "dataset": {
            "builtin": "synthetic",
            "num_samples": 100,
            "num_classes": 3,
            "shape": [1, 6, 6],
        },
    }
    assert api.post("/v1/jobs", json=spec).status_code == 201
    assert api.post("/v1/jobs", json=spec, tenant="b").status_code == 422  # not b's file
    assert api.delete(f"/v1/files/{f['id']}").status_code == 409
    wrong = dict(spec, teacher={"arch": "mlp_small", "num_classes": 7, "checkpoint": f["id"]})
    r = api.post("/v1/jobs", json=wrong)
    assert r.status_code == 422 and "fc.weight" in r.json()["errors"][0]["msg"]


def test_every_teacher_of_several_is_checked_and_protected(api):
    """`teachers`: each checkpoint is resolved, purpose-checked, fitted to its model and
    kept from deletion while the job is active, like `teacher`'s."""
    good = _upload(api, _weights()).json()
    data = _upload(api, np_bytes(), name="d.npz", purpose="dataset").json()
    dataset = {"builtin": "synthetic", "num_samples": 100, "num_classes": 3, "shape": [1, 6, 6]}
    spec = {
        "kind": "distill",
        "teachers": [
            {"arch": "mlp_small", "checkpoint": good["id"], "weight": 2},
            {"arch": "mlp_small", "checkpoint": data["id"]},
        ],
        "student": {"arch": "mlp_small"},
        "dataset": dataset,
    }
    r = api.post("/v1/jobs", json=spec)
    assert r.status_code == 422, r.text
    assert [e["loc"] for e in r.json()["errors"]] == ["/teachers/1/checkpoint"]
    misfit = {"arch": "mlp_small", "num_classes": 7, "checkpoint": good["id"]}
    r = api.post("/v1/jobs", json=dict(spec, teachers=[spec["teachers"][0], misfit]))
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == "/teachers/1/checkpoint"
    assert "fc.weight" in r.json()["errors"][0]["msg"]
    ok = dict(spec, teachers=[spec["teachers"][0], {"arch": "mlp"}])
    checked = api.post("/v1/jobs/validate", json=ok).json()
    assert checked["valid"] and any(
        "/teachers/1 has no checkpoint" in w for w in checked["warnings"]
    )
    r = api.post("/v1/jobs", json=ok)
    assert r.status_code == 201, r.text
    assert api.delete(f"/v1/files/{good['id']}").status_code == 409


def np_bytes() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((20, 1, 6, 6), np.float32), y=np.arange(20) % 3)
    return buf.getvalue()


def test_a_dataset_of_another_tenant_is_rejected(api):
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((20, 4), dtype=np.float32), y=np.arange(20) % 2)
    f = _upload(api, buf.getvalue(), name="d.npz", purpose="dataset", tenant="b").json()
    spec = {
        "kind": "train",
        "student": {"arch": "mlp"},
        "dataset": {"name": "npz", "path": f["id"]},
    }
    r = api.post("/v1/jobs", json=spec)
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == "/dataset/path"
    assert api.post("/v1/jobs", json=spec, tenant="b").status_code == 201


def test_oversized_upload_is_413_and_leaves_nothing(tmp_path):
    gen = build_api(make_settings(tmp_path, max_upload_bytes=10_000))
    api = next(gen)
    r = _upload(api, os.urandom(200_000))
    assert r.status_code == 413 and r.headers["content-type"] == "application/problem+json"
    assert list(api.settings.files_dir.iterdir()) == []
    gen.close()


def test_pickle_that_would_run_code_is_refused(api, tmp_path):
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save({"model": PickleExploit(marker)}, buf)
    r = _upload(api, buf.getvalue(), name="evil.pt")
    assert r.status_code == 422 and "refused" in r.json()["detail"]
    assert not marker.exists()
    assert [p for p in api.settings.files_dir.iterdir()] == []


def test_corrupt_safetensors_is_422(api):
    r = _upload(api, _weights()[:100])
    assert r.status_code == 422 and "safetensors" in r.json()["detail"]


def test_unsafe_archive_is_refused(api):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../../escape.png", b"x")
    r = _upload(api, buf.getvalue(), name="data.zip", purpose="dataset")
    assert r.status_code == 422 and "escapes" in r.json()["detail"]


def test_bad_requests(api):
    r = api.post("/v1/files", content=b"raw", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    r = api.post("/v1/files", files={"other": ("a", b"x")})
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == "/file"
    r = _upload(api, b"x", purpose="weird")
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == "/purpose"


def test_imagefolder_dataset_upload_runs(api):
    from PIL import Image

    from worker.supervisor import claim_and_run

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(12):
            for cls, color in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
                img = io.BytesIO()
                Image.new("RGB", (8, 8), color).save(img, format="PNG")
                zf.writestr(f"{cls}/{i}.png", img.getvalue())
    f = _upload(api, buf.getvalue(), name="colors.zip", purpose="dataset").json()
    spec = {
        "kind": "train",
        "student": {"arch": "small_cnn"},
        "dataset": {"name": "imagefolder", "path": f["id"], "image_size": 8, "test_fraction": 0.25},
        "training": {"epochs": 2, "batch_size": 4, "precision": "fp32"},
    }
    job = api.post("/v1/jobs", json=spec).json()
    assert claim_and_run(api.settings, job["id"]) == "succeeded"
    report = api.get(f"/v1/jobs/{job['id']}").json()["report"]
    assert report["dataset"]["input_shape"] == [3, 8, 8]


@pytest.mark.parametrize(
    ("name", "content", "words"),
    [
        ("corpus.txt", b"abc \xe9t\xe9 " * 3, "not UTF-8"),  # latin-1
        ("pairs.jsonl", b'{"prompt": "a", "completion": "b"}\n{"prompt": 1}\n', "line 2"),
        ("labels.jsonl", b'{"text": "a", "label": 1.5}\n', "label must be an integer"),
        ("text.jsonl", b'{"text": "a", "__class__": "os.system"}\n', "a record is"),
    ],
)
def test_a_text_set_that_cannot_be_read_is_refused_at_upload(api, name, content, words):
    before = api.get("/v1/files").json()["data"]
    r = _upload(api, content, name=name, purpose="dataset")
    assert r.status_code == 422, r.text
    assert words in r.json()["detail"]
    assert api.get("/v1/files").json()["data"] == before  # nothing kept
