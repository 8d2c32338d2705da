"""Uploads in parts (/v1/uploads): declared, sent in parts out of order, interrupted and
resumed, assembled and checked; and every field a client controls, abused."""

from __future__ import annotations

import hashlib
import io
import zipfile
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from app.db.models import Upload, UploadPart, utcnow
from app.db.session import session_scope
from tests.app.conftest import build_api, make_settings
from worker.maintenance import expire_uploads

PART = 64 * 1024  # the smallest part size the settings allow


@pytest.fixture
def api(tmp_path):
    yield from build_api(make_settings(tmp_path, upload_part_bytes=PART))


def _dataset_zip(images: int = 40) -> bytes:
    """An imagefolder archive of ~200 KB: several parts."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for i in range(images):
            pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="PNG")
            z.writestr(f"{'cat' if i % 2 else 'dog'}/{i}.png", buf.getvalue())
    return out.getvalue()


def _declare(api, blob: bytes, **over):
    body = {
        "filename": "pets.zip",
        "purpose": "dataset",
        "bytes": len(blob),
        "sha256": hashlib.sha256(blob).hexdigest(),
        **over,
    }
    return api.post("/v1/uploads", json=body)


def _part(api, upload, blob: bytes, n: int):
    size = upload["part_bytes"]
    return api.request(
        "PUT",
        f"/v1/uploads/{upload['id']}/parts/{n}",
        content=blob[(n - 1) * size : n * size],
        headers={"Content-Type": "application/octet-stream"},
    )


def test_an_interrupted_upload_resumes_and_its_digest_checks(api):
    blob = _dataset_zip()
    declared = _declare(api, blob)
    assert declared.status_code == 201, declared.text
    upload = declared.json()
    assert upload["part_bytes"] == PART and upload["parts"] == -(-len(blob) // PART) >= 3
    # the first attempt sends the last part and the first, then is cut off
    for n in (upload["parts"], 1):
        sent = _part(api, upload, blob, n)
        assert sent.status_code == 200, sent.text
        assert sent.json()["sha256"] == hashlib.sha256(blob[(n - 1) * PART : n * PART]).hexdigest()
    # a later attempt asks what arrived and sends the rest
    status = api.get(f"/v1/uploads/{upload['id']}").json()
    assert status["missing"] == list(range(2, upload["parts"]))
    assert status["bytes_received"] == PART + (len(blob) - (upload["parts"] - 1) * PART)
    early = api.post(f"/v1/uploads/{upload['id']}/complete")
    assert early.status_code == 409 and "have not arrived" in early.json()["detail"]
    for n in status["missing"]:
        assert _part(api, upload, blob, n).status_code == 200
    done = api.post(f"/v1/uploads/{upload['id']}/complete")
    assert done.status_code == 201, done.text
    stored = done.json()
    assert stored["sha256"] == hashlib.sha256(blob).hexdigest() and stored["bytes"] == len(blob)
    assert stored["purpose"] == "dataset" and stored["filename"] == "pets.zip"
    # it is an ordinary file now, and the upload is gone
    assert api.get(f"/v1/files/{stored['id']}").status_code == 200
    assert api.get(f"/v1/uploads/{upload['id']}").status_code == 404
    assert not (api.settings.uploads_dir / upload["id"]).exists()
    with session_scope(api.settings.db_url) as session:  # no part row left behind
        parts = session.scalars(select(UploadPart).where(UploadPart.upload_id == upload["id"]))
        assert list(parts) == []


def test_a_corrupted_part_fails_the_digest_and_can_be_sent_again(api):
    blob = _dataset_zip()
    upload = _declare(api, blob).json()
    for n in range(1, upload["parts"] + 1):
        _part(api, upload, blob, n)
    bad = bytearray(blob[PART : 2 * PART])
    bad[100] ^= 0xFF
    api.request("PUT", f"/v1/uploads/{upload['id']}/parts/2", content=bytes(bad))
    refused = api.post(f"/v1/uploads/{upload['id']}/complete")
    assert refused.status_code == 422 and "sha256" in refused.json()["detail"]
    parts = {
        p["number"]: p["sha256"] for p in api.get(f"/v1/uploads/{upload['id']}").json()["received"]
    }
    mine = {n: hashlib.sha256(blob[(n - 1) * PART : n * PART]).hexdigest() for n in parts}
    assert [n for n in parts if parts[n] != mine[n]] == [2]  # the client can tell which
    _part(api, upload, blob, 2)
    assert api.post(f"/v1/uploads/{upload['id']}/complete").status_code == 201


@pytest.mark.parametrize(
    ("over", "status", "words"),
    [
        ({"purpose": "anything"}, 422, "purpose"),
        ({"sha256": "z" * 64}, 422, "sha256"),
        ({"bytes": 0}, 422, "bytes"),
        ({"bytes": 10**15}, 413, "limited"),
        ({"filename": "a\x00b"}, 422, "filename"),
        ({"extra": 1}, 422, "extra"),
    ],
)
def test_a_bad_declaration_is_refused(api, over, status, words):
    response = _declare(api, b"x" * 100, **over)
    assert response.status_code == status, response.text
    assert words in response.text
    assert response.headers["content-type"].startswith("application/problem+json")


def test_a_path_as_filename_keeps_only_the_name(api):
    upload = _declare(api, b"x" * 10, filename="../../etc/passwd").json()
    assert upload["filename"] == "passwd"


def test_parts_out_of_range_or_of_the_wrong_size_are_refused(api):
    blob = _dataset_zip(10)
    upload = _declare(api, blob).json()
    base = f"/v1/uploads/{upload['id']}/parts"
    assert api.request("PUT", f"{base}/0", content=b"x").status_code == 422
    assert api.request("PUT", f"{base}/{upload['parts'] + 1}", content=b"x").status_code == 404
    short = api.request("PUT", f"{base}/1", content=b"x" * 10)
    assert short.status_code == 422 and "bytes" in short.json()["detail"]
    long = api.request("PUT", f"{base}/1", content=b"x" * (PART + 1))
    assert long.status_code == 413
    assert api.get(f"/v1/uploads/{upload['id']}").json()["received"] == []  # nothing kept
    folder = api.settings.uploads_dir / upload["id"]
    assert not folder.exists() or list(folder.iterdir()) == []  # no part, no temp file


def test_another_tenants_upload_is_not_found(api):
    blob = _dataset_zip(10)
    upload = _declare(api, blob).json()
    for method, path in [
        ("GET", f"/v1/uploads/{upload['id']}"),
        ("PUT", f"/v1/uploads/{upload['id']}/parts/1"),
        ("POST", f"/v1/uploads/{upload['id']}/complete"),
        ("DELETE", f"/v1/uploads/{upload['id']}"),
    ]:
        response = api.request(method, path, tenant="b", content=blob[:PART])
        assert response.status_code == 404, (method, path)
    assert api.get(f"/v1/uploads/{upload['id']}").status_code == 200


def test_open_uploads_count_against_the_quota_and_are_capped(tmp_path):
    gen = build_api(
        make_settings(tmp_path, upload_part_bytes=PART, max_stored_bytes=1000, max_open_uploads=2)
    )
    api = next(gen)
    try:
        assert _declare(api, b"x" * 600).status_code == 201
        full = _declare(api, b"y" * 600)  # 600 declared + 600 open > 1000
        assert full.status_code == 429, full.text
        assert _declare(api, b"z" * 300).status_code == 201
        assert _declare(api, b"w" * 10).status_code == 429  # two open already
    finally:
        gen.close()


def test_an_expired_upload_is_deleted_with_its_parts(api):
    blob = _dataset_zip(10)
    upload = _declare(api, blob).json()
    _part(api, upload, blob, 1)
    with session_scope(api.settings.db_url) as session:
        session.execute(
            update(Upload)
            .where(Upload.id == upload["id"])
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    assert api.get(f"/v1/uploads/{upload['id']}").status_code == 404  # expired: gone
    assert expire_uploads(api.settings) == [upload["id"]]
    assert not (api.settings.uploads_dir / upload["id"]).exists()


def test_an_aborted_upload_frees_its_quota(api):
    upload = _declare(api, b"x" * 100).json()
    assert api.delete(f"/v1/uploads/{upload['id']}").status_code == 204
    assert api.get(f"/v1/uploads/{upload['id']}").status_code == 404
