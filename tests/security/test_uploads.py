"""Uploads an attacker controls: code in weights, files used for another purpose,
secrets echoed in errors, decompression bombs, malformed archives."""

from __future__ import annotations

import hashlib
import io
import struct
import tarfile
import threading
import time
import zipfile

import httpx
import numpy as np
import pytest
import torch
from torch import nn

from tests.security.conftest import Server
from tests.support.specs import tiny_job

pytestmark = pytest.mark.integration  # a real kd serve


def upload(client, name: str, blob: bytes, purpose: str):
    return client.post("/v1/files", files={"file": (name, blob)}, data={"purpose": purpose})


def torchscript_bytes() -> bytes:
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(nn.Linear(4, 2)), buf)
    return buf.getvalue()


def test_torchscript_is_refused_at_upload_and_as_a_dataset_turned_checkpoint(server: Server):
    with server.client() as c:
        r = upload(c, "teacher.pt", torchscript_bytes(), "checkpoint")
        assert r.status_code == 422, r.text
        assert "TorchScript" in r.json()["detail"]
        # the same archive as a "dataset" zip: accepted as data, never as weights
        r = upload(c, "teacher.zip", torchscript_bytes(), "dataset")
        assert r.status_code in (201, 422), r.text
        if r.status_code == 201:
            spec = tiny_job(student={"arch": "mlp_small", "checkpoint": r.json()["id"]})
            for path in ("/v1/jobs/validate", "/v1/jobs"):
                out = c.post(path, json=spec)
                problems = out.json()["errors"]
                assert {p["loc"] for p in problems} == {"/student/checkpoint"}, out.text
                assert "purpose 'dataset'" in problems[0]["msg"]


def test_a_checkpoint_upload_is_not_a_dataset(server: Server):
    buf = io.BytesIO()
    torch.save(nn.Linear(4, 2).state_dict(), buf)
    with server.client() as c:
        file_id = upload(c, "w.pt", buf.getvalue(), "checkpoint").json()["id"]
        spec = tiny_job(dataset={"name": "npz", "path": file_id})
        r = c.post("/v1/jobs", json=spec)
        assert r.status_code == 422 and r.json()["errors"][0]["loc"] == "/dataset/path"


def test_errors_never_quote_the_uploaded_bytes(server: Server):
    secret = "kd_LEAKED_" + "x" * 20
    blobs = {
        "a.safetensors": (60).to_bytes(8, "little") + b'{"' + secret.encode() + b'":' + b"1" * 40,
        "b.pt": b"\x80\x02c" + secret.encode() + b"\nsystem\n(S'id'\ntR.",
        "c.pt": b"PK\x03\x04" + secret.encode() * 20,
    }
    with server.client() as c:
        for name, blob in blobs.items():
            r = upload(c, name, blob, "checkpoint")
            assert r.status_code == 422, r.text
            assert secret not in r.text


def _zip(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _zeros_npz(megabytes: int) -> bytes:
    buf = io.BytesIO()
    x = np.zeros((megabytes * 1024**2 // 4 // 64, 64), dtype=np.float32)
    np.savez_compressed(buf, x=x, y=np.zeros(len(x), dtype=np.int64))
    return buf.getvalue()


def test_decompression_bombs_are_refused_without_inflating(server: Server):
    """The server caps unpacked archives at 64 MiB (KD_MAX_ARCHIVE_UNPACKED_BYTES)."""
    npz_bomb = _zeros_npz(100)
    zip_bomb = _zip({"a/zeros.png": bytes(100 * 1024**2), "b/one.png": b"x"})
    assert len(npz_bomb) < 1024**2 and len(zip_bomb) < 1024**2
    with server.client() as c:
        for name, blob in (("bomb.npz", npz_bomb), ("bomb.zip", zip_bomb)):
            r = upload(c, name, blob, "dataset")
            assert r.status_code == 422, (name, r.text)
            assert "limit" in r.json()["detail"] or "more than" in r.json()["detail"]
        assert c.get("/healthz").status_code == 200


def _patch(blob: bytes, signature: bytes, offset: int, value: bytes) -> bytes:
    out = bytearray(blob)
    start = 0
    while (i := out.find(signature, start)) != -1:
        out[i + offset : i + offset + len(value)] = value
        start = i + 4
    return bytes(out)


def malformed_archives() -> dict[str, bytes]:
    plain = _zip({"a/x.png": b"hello" * 200, "b/y.png": b"world" * 200}, zipfile.ZIP_STORED)
    encrypted = _patch(_patch(plain, b"PK\x03\x04", 6, b"\x01"), b"PK\x01\x02", 8, b"\x01")
    bad_crc = plain.replace(b"hello" * 200, b"HELLO" + b"hello" * 199)
    unknown_method = _patch(
        _patch(plain, b"PK\x03\x04", 8, struct.pack("<H", 99)),
        b"PK\x01\x02",
        10,
        struct.pack("<H", 99),
    )
    lying_size = _patch(  # declares 10 bytes, inflates to 1,000
        _patch(plain, b"PK\x03\x04", 22, struct.pack("<I", 10)),
        b"PK\x01\x02",
        24,
        struct.pack("<I", 10),
    )
    tgz = io.BytesIO()
    with tarfile.open(fileobj=tgz, mode="w:gz") as tf:
        for i in range(3):
            data = np.random.default_rng(i).bytes(50_000)
            info = tarfile.TarInfo(f"c{i}/img.png")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    truncated = tgz.getvalue()[: len(tgz.getvalue()) // 2]
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000,), }"
    header += b" " * (63 - len(header) % 64) + b"\n"
    npy = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + bytes(64)
    y = io.BytesIO()
    np.save(y, np.zeros(10, dtype=np.int64))
    huge_claim = _zip({"x.npy": npy, "y.npy": y.getvalue()})
    return {
        "encrypted.zip": encrypted,
        "badcrc.zip": bad_crc,
        "method99.zip": unknown_method,
        "lying.zip": lying_size,
        "truncated.tar.gz": truncated,
        "huge.npz": huge_claim,
    }


def test_malformed_archives_answer_422_not_500(server: Server):
    with server.client() as c:
        for name, blob in malformed_archives().items():
            r = upload(c, name, blob, "dataset")
            assert r.status_code == 422, (name, r.status_code, r.text)
            assert r.headers["content-type"] == "application/problem+json"


def _declared_upload(client, blob: bytes) -> dict:
    body = {
        "filename": "race.safetensors",
        "purpose": "checkpoint",
        "bytes": len(blob),
        "sha256": hashlib.sha256(blob).hexdigest(),
    }
    r = client.post("/v1/uploads", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def _weights(megabytes: int) -> bytes:
    from safetensors.numpy import save

    return save({"w": np.zeros(megabytes * 1024**2 // 4, np.float32)})


def test_concurrent_completes_of_one_upload_make_one_file(server: Server):
    """Security round 2: six `complete` calls at once all answered 201 and each
    assembled its own copy. Now one wins; the others get 409 and make nothing."""
    client = server.tenant(f"race-{threading.get_ident()}")
    blob = _weights(24)
    upload = _declared_upload(client, blob)
    size = upload["part_bytes"]
    for n in range(1, upload["parts"] + 1):
        sent = client.put(
            f"/v1/uploads/{upload['id']}/parts/{n}",
            content=blob[(n - 1) * size : n * size],
            headers={"Content-Type": "application/octet-stream"},
        )
        assert sent.status_code == 200, sent.text
    start = threading.Barrier(6)
    answers: list[int] = []

    def complete() -> None:
        with httpx.Client(base_url=server.url, headers=client.headers, timeout=120) as c:
            start.wait()
            answers.append(c.post(f"/v1/uploads/{upload['id']}/complete").status_code)

    threads = [threading.Thread(target=complete) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    # one 201; the others 409 while it assembles, or 404 once it is a file
    assert sorted(answers)[0] == 201 and answers.count(201) == 1, answers
    assert set(answers) <= {201, 404, 409}, answers
    listed = client.get("/v1/files").json()["data"]
    files = [f for f in listed if f["filename"] == "race.safetensors"]
    assert len(files) == 1, files
    leftovers = [p for p in (server.data / "files").iterdir() if p.name.startswith(".upload-")]
    assert leftovers == []


def test_deleting_an_upload_while_a_part_streams_is_a_404_not_a_500(server: Server):
    client = server.tenant(f"abort-{threading.get_ident()}")
    blob = _weights(8)
    upload = _declared_upload(client, blob)
    first = blob[: upload["part_bytes"]]
    streaming, deleted = threading.Event(), threading.Event()

    def body():
        for i in range(0, len(first), 256 * 1024):
            yield first[i : i + 256 * 1024]
            if i == 0:
                streaming.set()
                deleted.wait(30)

    answer: list[httpx.Response] = []

    def put() -> None:
        answer.append(
            client.put(
                f"/v1/uploads/{upload['id']}/parts/1",
                content=body(),
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(len(first)),
                },
            )
        )

    sender = threading.Thread(target=put)
    sender.start()
    assert streaming.wait(30)
    time.sleep(0.5)  # the first chunk is in the server's part file
    assert client.delete(f"/v1/uploads/{upload['id']}").status_code == 204
    deleted.set()
    sender.join(60)
    assert answer and answer[0].status_code in (404, 409), answer and answer[0].text
    assert answer[0].headers["content-type"].startswith("application/problem+json")
