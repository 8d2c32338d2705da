"""Datasets by reference (app.services.dataset_refs): WebDataset shards streamed from a
real S3-compatible store (moto server) into the worker's bounded cache and trained on;
a local root; and every way a tenant could reach beyond its own prefix, refused."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest

from app.services import dataset_refs
from tests.app.conftest import BUCKET, build_api, make_settings, tiny_job
from tests.kdcore.test_image_sources import write_shards
from worker.supervisor import claim_and_run

pytestmark = pytest.mark.integration  # a real S3 server, real training

DATA_BUCKET = "kd-datasets"


@pytest.fixture(scope="module")
def shards_in_s3(s3_endpoint, tmp_path_factory):
    """Two WebDataset shards under tenant prefixes 'tenant-a/' and 'someone-else/'."""
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=DATA_BUCKET)
    folder = write_shards(tmp_path_factory.mktemp("shards"))
    for shard in sorted(folder.iterdir()):
        for prefix in ("tenant-a/pets", "someone-else/pets"):
            s3.upload_file(str(shard), DATA_BUCKET, f"{prefix}/{shard.name}")
    return s3_endpoint


def _api(tmp_path, endpoint, **over):
    settings = make_settings(
        tmp_path,
        s3_endpoint_url=endpoint,
        dataset_buckets=f"{DATA_BUCKET},{BUCKET}",
        **over,
    )
    return build_api(settings)


def _rename_tenant(api, name: str) -> None:
    """Tenant a (created as tenant-a-<hex>) gets a fixed name: its dataset prefix."""
    from sqlalchemy import update

    from app.db.models import Tenant
    from app.db.session import session_scope

    with session_scope(api.settings.db_url) as session:
        session.execute(update(Tenant).where(Tenant.name.startswith("tenant-a-")).values(name=name))


def _job(path: str) -> dict:
    return tiny_job(
        dataset={"name": "webdataset", "path": path, "image_size": 8},
        student={"arch": "small_cnn"},
    )


def test_webdataset_shards_stream_from_s3_into_the_cache_and_train(tmp_path, shards_in_s3):
    gen = _api(tmp_path, shards_in_s3)
    api = next(gen)
    try:
        _rename_tenant(api, "tenant-a")
        ref = f"s3://{DATA_BUCKET}/tenant-a/pets/"
        job = api.post("/v1/jobs", json=_job(ref))
        assert job.status_code == 201, job.text
        assert claim_and_run(api.settings, job.json()["id"]) == "succeeded"
        report = api.get(f"/v1/jobs/{job.json()['id']}").json()["report"]
        assert report["dataset"]["name"] == "webdataset"
        assert sum(report["dataset"][k] for k in ("train", "val", "test")) == 60
        cached = api.settings.data_dir / "dataset-cache" / DATA_BUCKET / "tenant-a" / "pets"
        assert sorted(p.name for p in cached.glob("*.tar")) == ["train-0000.tar", "train-0001.tar"]
        # a second job reuses the cached shards (same ETags): nothing fetched again
        stamps = {p.name: p.stat().st_mtime_ns for p in cached.glob("*.tar")}
        again = api.post("/v1/jobs", json=_job(ref)).json()
        assert claim_and_run(api.settings, again["id"]) == "succeeded"
        assert {p.name: p.stat().st_mtime_ns for p in cached.glob("*.tar")} == stamps
    finally:
        gen.close()


def test_webdataset_shards_from_s3_train_on_the_streaming_path(tmp_path, shards_in_s3):
    gen = _api(tmp_path, shards_in_s3)
    api = next(gen)
    try:
        _rename_tenant(api, "tenant-a")
        job = _job(f"s3://{DATA_BUCKET}/tenant-a/pets/")
        job["dataset"]["streaming"] = True
        job["training"]["data_workers"] = 2
        created = api.post("/v1/jobs", json=job)
        assert created.status_code == 201, created.text
        assert claim_and_run(api.settings, created.json()["id"]) == "succeeded"
        report = api.get(f"/v1/jobs/{created.json()['id']}").json()["report"]
        loading = report["dataset"]["loading"]
        assert loading["path"] == "streaming" and loading["images"] == 60
        assert loading["data_workers"] == 2
    finally:
        gen.close()


def test_a_memory_budget_over_the_services_limit_is_refused(tmp_path, shards_in_s3):
    gen = _api(tmp_path, shards_in_s3, max_dataset_bytes=64 * 1024**2)
    api = next(gen)
    try:
        _rename_tenant(api, "tenant-a")
        job = _job(f"s3://{DATA_BUCKET}/tenant-a/pets/")
        job["dataset"]["memory_budget_mb"] = 65
        refused = api.post("/v1/jobs", json=job)
        assert refused.status_code == 422
        assert refused.json()["errors"][0]["loc"] == "/dataset/memory_budget_mb"
    finally:
        gen.close()


@pytest.mark.parametrize(
    ("path", "words"),
    [
        (f"s3://{DATA_BUCKET}/someone-else/pets/", "its own prefix"),
        (f"s3://{DATA_BUCKET}/tenant-a/../someone-else/pets/", "no '..'"),
        ("s3://not-allowed/tenant-a/pets/", "not one datasets are read from"),
        (f"s3://{DATA_BUCKET}/tenant-a/nothing-here/", "no objects"),
        ("local://nope/x", "no dataset root"),
    ],
)
def test_references_beyond_the_tenants_prefix_are_refused(tmp_path, shards_in_s3, path, words):
    gen = _api(tmp_path, shards_in_s3)
    api = next(gen)
    try:
        _rename_tenant(api, "tenant-a")
        response = api.post("/v1/jobs", json=_job(path))
        assert response.status_code == 422, response.text
        errors = response.json()["errors"]
        assert errors[0]["loc"] == "/dataset/path" and words in errors[0]["msg"], errors
    finally:
        gen.close()


def test_a_local_root_serves_the_tenants_folder_only(tmp_path):
    root = tmp_path / "datasets"
    write_shards(root / "tenant-a" / "pets")
    write_shards(root / "someone-else" / "pets")
    outside = tmp_path / "outside"
    write_shards(outside)
    (root / "tenant-a" / "escape").symlink_to(outside, target_is_directory=True)
    gen = build_api(make_settings(tmp_path, dataset_roots=f"shared={root}"))
    api = next(gen)
    try:
        _rename_tenant(api, "tenant-a")
        ok = api.post("/v1/jobs", json=_job("local://shared/pets"))
        assert ok.status_code == 201, ok.text
        assert claim_and_run(api.settings, ok.json()["id"]) == "succeeded"
        for bad, words in [
            ("local://shared/../someone-else/pets", "no '..'"),
            ("local://shared/escape", "leaves the tenant's folder"),
        ]:
            response = api.post("/v1/jobs", json=_job(bad))
            assert response.status_code == 422 and words in response.text, response.text
    finally:
        gen.close()


def test_an_object_key_that_would_leave_the_cache_refuses_the_dataset(tmp_path, s3_endpoint):
    """A key such as 'tenant-a/evil/x/../../../../escape.tar' is never written."""
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="kd-hostile")
    s3.put_object(Bucket="kd-hostile", Key="tenant-a/evil/ok.tar", Body=b"x")
    s3.put_object(Bucket="kd-hostile", Key="tenant-a/evil/x/../../../../escape.tar", Body=b"x")
    settings = make_settings(tmp_path, s3_endpoint_url=s3_endpoint, dataset_buckets="kd-hostile")
    with pytest.raises(dataset_refs.DatasetRefError, match="plain relative path"):
        dataset_refs.local_path(settings, "tenant-a", "s3://kd-hostile/tenant-a/evil/")
    assert not list(tmp_path.rglob("escape.tar"))


def test_a_dataset_over_the_cache_bound_is_refused_before_fetching(tmp_path, shards_in_s3):
    settings = make_settings(
        tmp_path,
        s3_endpoint_url=shards_in_s3,
        dataset_buckets=DATA_BUCKET,
        dataset_cache_bytes=1000,
    )
    with pytest.raises(dataset_refs.DatasetRefError, match="over this worker's dataset cache"):
        dataset_refs.local_path(settings, "tenant-a", f"s3://{DATA_BUCKET}/tenant-a/pets/")
    assert not (settings.data_dir / "dataset-cache" / DATA_BUCKET / "tenant-a").exists()


def _errors(api, path: str) -> str:
    response = api.post("/v1/jobs/validate", json=_job(path))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["valid"] is False, body
    return " ".join(e["msg"] for e in body["errors"])


def test_links_inside_a_tenants_folder_are_neither_followed_nor_probed(tmp_path):
    """Security round 2: tenant a's folder holds only a link to another tenant's shard
    (or to a host file): it is not listed, counted or opened, and the answer is the same
    whether the link's target exists or not."""
    root = tmp_path / "datasets"
    victim = write_shards(root / "someone-else" / "pets")
    home = root / "tenant-a"
    for folder, target in (
        ("wds_link", victim / "train-0000.tar"),
        ("host_file", Path("/etc/passwd")),
        ("no_such_host_file", Path("/nonexistent-kd-test/secret.tar")),
    ):
        (home / folder).mkdir(parents=True)
        (home / folder / "shard-000.tar").symlink_to(target)
    mixed = write_shards(home / "mixed", shards=1)  # one real shard beside a stolen one
    (mixed / "train-0001.tar").symlink_to(victim / "train-0001.tar")
    gen = build_api(make_settings(tmp_path, dataset_roots=f"shared={root}"))
    api = next(gen)
    try:
        _rename_tenant(api, "tenant-a")
        answers = {
            folder: _errors(api, f"local://shared/{folder}")
            for folder in ("wds_link", "host_file", "no_such_host_file")
        }
        for folder, text in answers.items():
            assert "no .tar shards" in text, text
            assert (
                "someone-else" not in text
                and "passwd" not in text
                and "/" not in text.replace(f"local://shared/{folder}", "")
            ), text
        # the host file's existence is not told: the same words for both
        assert answers["host_file"].replace("host_file", "X") == answers[
            "no_such_host_file"
        ].replace("no_such_host_file", "X")
        ok = api.post("/v1/jobs", json=_job("local://shared/mixed"))
        assert ok.status_code == 201, ok.text
        assert claim_and_run(api.settings, ok.json()["id"]) == "succeeded"
        report = api.get(f"/v1/jobs/{ok.json()['id']}").json()["report"]
        dataset = report["dataset"]
        # the real shard's 30 samples, not the linked one's
        assert dataset["train"] + dataset["val"] + dataset["test"] == 30, dataset
    finally:
        gen.close()
