"""Admission through the service (app.services.admission): one library call per request,
each file id resolved once, every problem with its pointer."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import save_file

from app.services import admission
from kdcore.models import build_model
from tests.support.specs import tiny_spec


def _upload_weights(api, tmp_path: Path, arch: str) -> str:
    path = tmp_path / f"{arch}.safetensors"
    save_file(build_model(arch, 4, (1, 8, 8)).state_dict(), str(path))
    r = api.post(
        "/v1/files",
        files={"file": (path.name, path.read_bytes())},
        data={"purpose": "checkpoint"},
    )
    assert r.status_code == 201, r.text
    return r.json()["id"]


@pytest.fixture
def resolved(monkeypatch) -> list[str]:
    """Every file id admission resolves, in order."""
    calls: list[str] = []
    real = admission.resolve_reference

    def counting(session, tenant_id, ref, purpose):
        calls.append(ref)
        return real(session, tenant_id, ref, purpose)

    monkeypatch.setattr(admission, "resolve_reference", counting)
    return calls


@pytest.mark.parametrize("route", ["/v1/jobs", "/v1/jobs/validate"])
def test_each_file_id_is_resolved_once_per_request(api, tmp_path, resolved, route) -> None:
    teacher = _upload_weights(api, tmp_path, "small_cnn")
    student = _upload_weights(api, tmp_path, "mlp_small")
    spec = tiny_spec(
        teacher={"arch": "small_cnn", "checkpoint": teacher},
        student={"arch": "mlp_small", "checkpoint": student},
    )
    r = api.post(route, json=spec)
    assert r.status_code in (200, 201), r.text
    if route.endswith("validate"):
        assert r.json()["valid"] is True, r.text
    assert sorted(resolved) == sorted([teacher, student])


def test_problems_of_the_library_and_of_the_service_come_back_together(api, tmp_path) -> None:
    """A file that is not the caller's and a webhook the egress policy refuses: both
    pointers in one answer."""
    spec = tiny_spec(
        teacher={"arch": "small_cnn", "checkpoint": "file_nobodys"},
        webhook_url="http://10.0.0.1/hook",  # refused by policy; nothing is sent there
    )
    r = api.post("/v1/jobs/validate", json=spec)
    assert r.status_code == 200, r.text
    locations = [e["loc"] for e in r.json()["errors"]]
    assert locations == ["/teacher/checkpoint", "/webhook_url"]
