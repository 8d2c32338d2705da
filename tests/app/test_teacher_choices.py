"""What the dashboard offers as a teacher: the tenant's trained students
(`GET /v1/artifacts?name=student.safetensors`) and uploaded checkpoints
(`GET /v1/files?purpose=checkpoint`), each tenant seeing only its own."""

import io

import numpy as np
import pytest

from tests.app.conftest import tiny_job
from tests.app.test_files_api import _upload, _weights
from worker.supervisor import claim_and_run

pytestmark = pytest.mark.integration  # a real training run makes the artifact


def test_trained_students_and_uploads_are_listed_per_tenant(api):
    job = api.post("/v1/jobs", json=tiny_job(name="teacher-run")).json()
    assert claim_and_run(api.settings, job["id"]) == "succeeded"
    listed = api.get("/v1/artifacts").json()  # default name: student.safetensors
    assert len(listed) == 1
    (art,) = listed
    assert art["job_id"] == job["id"] and art["name"] == "student.safetensors"
    assert art["job_name"] == "teacher-run" and art["job_kind"] == "train"
    assert art["arch"] == "mlp_small" and art["download_url"].endswith("/content")
    assert api.get(art["download_url"]).status_code == 200
    # it teaches a new job as it is
    spec = tiny_job(
        kind="distill", teacher={"arch": art["arch"], "checkpoint": art["id"]}, name="student"
    )
    assert api.post("/v1/jobs/validate", json=spec).json()["valid"]
    # an attacker's view: another tenant's artifact id is no input, whatever it names,
    # and an artifact of the wrong kind is refused with what would do
    refused = api.post("/v1/jobs/validate", json=spec, tenant="b").json()
    assert not refused["valid"] and refused["errors"][0]["loc"] == "/teacher/checkpoint"
    assert "no file or artifact" in refused["errors"][0]["msg"]
    report_id = next(
        a["id"] for a in api.get("/v1/artifacts", params={"name": "report.json"}).json()
    )
    as_teacher = tiny_job(kind="distill", teacher={"arch": "mlp_small", "checkpoint": report_id})
    (error,) = api.post("/v1/jobs/validate", json=as_teacher).json()["errors"]
    assert "(report.json) cannot be used as a checkpoint" in error["msg"]
    as_data = tiny_job(dataset={"name": "npz", "path": art["id"]})
    (error,) = api.post("/v1/jobs/validate", json=as_data).json()["errors"]
    assert error["loc"] == "/dataset/path" and "only for text sets" in error["msg"]
    as_text = {
        "kind": "train",
        "task": "causal_lm",
        "student": {"arch": "hf:GPT2LMHeadModel", "config": {"n_layer": 1, "n_embd": 8}},
        "dataset": {"name": "text", "path": art["id"]},
    }
    (error,) = api.post("/v1/jobs/validate", json=as_text).json()["errors"]
    assert error["loc"] == "/dataset/path"
    assert "(student.safetensors) cannot be used as a dataset" in error["msg"]
    # other names, other tenants
    names = [a["name"] for a in api.get("/v1/artifacts", params={"name": "report.json"}).json()]
    assert names == ["report.json"]
    assert api.get("/v1/artifacts", params={"name": "nothing.bin"}).json() == []
    assert api.get("/v1/artifacts", tenant="b").json() == []

    checkpoint = _upload(api, _weights()).json()
    buffer = io.BytesIO()
    np.savez(buffer, x=np.zeros((8, 1, 6, 6), np.float32), y=np.arange(8) % 2)
    dataset = _upload(api, buffer.getvalue(), name="d.npz", purpose="dataset")
    assert dataset.status_code == 201, dataset.text
    assert len(api.get("/v1/files").json()["data"]) == 2
    only = api.get("/v1/files", params={"purpose": "checkpoint"}).json()["data"]
    assert [f["id"] for f in only] == [checkpoint["id"]]
    assert api.get("/v1/files", params={"purpose": "checkpoint"}, tenant="b").json()["data"] == []


@pytest.mark.parametrize(
    "query",
    [
        {"limit": 0},
        {"limit": 201},
        {"name": ""},
        {"name": "x" * 256},
        {"limit": "many"},
    ],
)
def test_artifact_list_bounds_are_problems(api, query):
    r = api.get("/v1/artifacts", params=query)
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"


def test_file_list_purpose_is_one_of_two(api):
    r = api.get("/v1/files", params={"purpose": "weights; DROP TABLE files"})
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"


def test_artifact_list_needs_a_key(api):
    assert api.client.get("/v1/artifacts").status_code == 401
