"""The S3 backend of the artifact store against a real S3-compatible server (moto in
server mode, a separate process on 127.0.0.1): uploads, checkpoints and outputs go to
the bucket; a worker on another "host" (its own data folder, sharing only the database
and the bucket) runs the job and another resumes it; downloads stream from the bucket
with Range; deleting a job removes its objects."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import boto3
import pytest
from safetensors.torch import save

from app import storage
from app.db.models import Checkpoint, File
from app.db.session import session_scope
from app.settings import Settings
from kdcore.models import build_model
from tests.app.conftest import BUCKET, Api, build_api, make_settings, tiny_job
from worker.supervisor import claim_and_run

pytestmark = pytest.mark.integration


def s3_settings(tmp_path: Path, endpoint: str, host: str, db_url: str = "") -> Settings:
    return make_settings(
        tmp_path / host, db_url, storage_url=f"s3://{BUCKET}/kd", s3_endpoint_url=endpoint
    )


def keys(endpoint: str, prefix: str) -> list[str]:
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    page = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for o in page.get("Contents", []))


def test_store_roundtrip(tmp_path: Path, s3_endpoint: str) -> None:
    settings = s3_settings(tmp_path, s3_endpoint, "a")
    src = tmp_path / "blob.bin"
    src.write_bytes(bytes(range(256)) * 5000)
    location = storage.put(settings, src, "unit/blob.bin")
    assert location == f"s3://{BUCKET}/kd/unit/blob.bin" and storage.exists(settings, location)
    assert (
        b"".join(storage.read_range(settings, location, 1000, 70000))
        == src.read_bytes()[1000:71000]
    )
    copy = storage.local_copy(settings, location)
    assert copy.read_bytes() == src.read_bytes() and copy.is_relative_to(
        settings.data_dir.resolve()
    )
    storage.delete_prefix(settings, "unit")
    assert not storage.exists(settings, location) and keys(s3_endpoint, "kd/unit/") == []


def test_jobs_run_across_hosts_that_share_only_the_bucket(tmp_path: Path, s3_endpoint: str) -> None:
    host_a = s3_settings(tmp_path, s3_endpoint, "api-host")
    db_url = host_a.db_url  # the SQLite file of host A stands in for the shared database
    gen = build_api(host_a)
    api: Api = next(gen)
    try:
        # upload a teacher: it lands in the bucket, not in the API host's folder
        teacher = build_model("mlp", 3, (1, 6, 6))
        blob = save({k: v.contiguous() for k, v in teacher.state_dict().items()})
        r = api.post(
            "/v1/files",
            files={"file": ("teacher.safetensors", io.BytesIO(blob))},
            data={"purpose": "checkpoint"},
        )
        assert r.status_code == 201, r.text
        file_id = r.json()["id"]
        with session_scope(db_url) as session:
            row = session.get(File, file_id)
            assert row is not None and row.path == f"s3://{BUCKET}/kd/files/{file_id}"
        assert not any((host_a.data_dir / "files").glob("file_*"))
        spec = tiny_job(
            kind="distill",
            teacher={"arch": "mlp", "checkpoint": file_id},
            distillation={"method": "kd"},
            training={"epochs": 2, "batch_size": 32, "precision": "fp32"},
        )
        job = api.post("/v1/jobs", json=spec).json()
        assert job["status"] == "queued", job

        # a worker on host B: its own empty data folder, the same database and bucket
        host_b = s3_settings(tmp_path, s3_endpoint, "worker-host", db_url)
        assert claim_and_run(host_b, job["id"]) == "succeeded"
        arts = {a["name"]: a for a in api.get(f"/v1/jobs/{job['id']}/artifacts").json()}
        stored = keys(s3_endpoint, f"kd/jobs/{job['id']}/")
        assert f"kd/jobs/{job['id']}/student.safetensors" in stored
        assert f"kd/jobs/{job['id']}/checkpoints/epoch2.pt" in stored
        with session_scope(db_url) as session:
            ckpts = session.query(Checkpoint).filter_by(job_id=job["id"]).all()
            assert ckpts and all(c.path.startswith("s3://") for c in ckpts)

        # host A serves the download from the bucket: whole, ranged, digest-checked
        art = arts["student.safetensors"]
        full = api.get(art["download_url"])
        assert full.status_code == 200 and hashlib.sha256(full.content).hexdigest() == art["sha256"]
        part = api.get(art["download_url"], headers={"Range": "bytes=100-299"})
        assert part.status_code == 206 and part.content == full.content[100:300]

        # a retry from the checkpoint on host C resumes from the bucket's copy
        retry = api.post(f"/v1/jobs/{job['id']}/retry", params={"from_checkpoint": "true"})
        assert retry.status_code == 201, retry.text
        host_c = s3_settings(tmp_path, s3_endpoint, "third-host", db_url)
        retry_id = retry.json()["id"]
        status = claim_and_run(host_c, retry_id)
        assert status == "succeeded", api.get(f"/v1/jobs/{retry_id}").json()["error"]
        events = api.get(f"/v1/jobs/{retry_id}/events").json()["data"]
        attempt = next(e for e in events if e["type"] == "attempt")
        assert attempt["data"]["resume_from_step"] is not None

        # deleting the job deletes its objects
        assert api.delete(f"/v1/jobs/{job['id']}").status_code == 204
        assert keys(s3_endpoint, f"kd/jobs/{job['id']}/") == []
        assert api.delete(f"/v1/files/{file_id}").status_code in (204, 409)
    finally:
        gen.close()
