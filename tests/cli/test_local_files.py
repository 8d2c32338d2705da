"""`kd submit` with local files: every model's file and the dataset are found, checked
before anything is sent, validated by the service first, and uploaded once each."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from kdservice.cli import local_files
from kdservice.cli.client_commands import CLIError, _prepare
from kdservice.client._core import file_sha256
from kdservice.client.models import Validation


class FakeClient:
    """The service as `_prepare` sees it: files it holds (by sha256), a verdict."""

    def __init__(self, held: dict[str, str] | None = None, errors=()):
        self.held = held or {}  # sha256 -> file id
        self.errors = list(errors)
        self.uploads: list[tuple[str, str]] = []
        self.validated: list[dict] = []

    def find_file(self, path, purpose):
        file_id = self.held.get(file_sha256(path))
        return SimpleNamespace(id=file_id) if file_id else None

    def validate(self, spec):
        self.validated.append(spec)
        found = [{"loc": loc, "msg": msg} for loc, msg in self.errors]
        teacher = (spec.get("teacher") or {}).get("checkpoint")
        if teacher and not teacher.startswith(("file_", "art_")):  # a path it cannot know
            found.append({"loc": "/teacher/checkpoint", "msg": f"no file {teacher!r}"})
        return Validation(valid=not found, errors=found, warnings=[])

    def upload(self, path, purpose):
        self.uploads.append((Path(path).name, purpose))
        return SimpleNamespace(id=f"file_{len(self.uploads)}")


def _weights(path: Path, value: float = 0.0) -> Path:
    save_file({"w": torch.full((2, 2), value)}, str(path))
    return path


def _npz(path: Path) -> Path:
    np.savez(path, x=np.zeros((20, 1, 4, 4), np.float32), y=np.arange(20) % 2)
    return path


def test_every_teachers_file_and_the_dataset_are_uploaded_once(tmp_path):
    _weights(tmp_path / "a.safetensors", 1.0)
    _weights(tmp_path / "b.safetensors", 2.0)
    _npz(tmp_path / "data.npz")
    spec = {
        "teachers": [
            {"arch": "mlp", "checkpoint": "a.safetensors"},
            {"arch": "mlp", "checkpoint": "file_kept"},
            {"arch": "mlp", "checkpoint": "b.safetensors"},
        ],
        "student": {"arch": "mlp"},
        "dataset": {"name": "npz", "path": "data.npz"},
    }
    held = {file_sha256(tmp_path / "b.safetensors"): "file_had"}
    client = FakeClient(held)
    _prepare(client, spec, tmp_path)  # type: ignore[arg-type]
    assert client.uploads == [("a.safetensors", "checkpoint"), ("data.npz", "dataset")]
    assert [t["checkpoint"] for t in spec["teachers"]] == ["file_1", "file_kept", "file_had"]
    assert spec["dataset"]["path"] == "file_2"
    # the service validated the spec before the uploads, with the held file's id in it
    assert client.validated[0]["teachers"][2]["checkpoint"] == "file_had"


def test_a_spec_the_service_refuses_uploads_nothing(tmp_path):
    _weights(tmp_path / "t.safetensors")
    spec = {
        "teacher": {"arch": "mlp", "checkpoint": "t.safetensors"},
        "student": {"arch": "mlp"},
        "dataset": {"name": "digits"},
    }
    client = FakeClient(errors=[("/distilation", "unknown field 'distilation'")])
    with pytest.raises(CLIError, match="nothing was uploaded.*/distilation"):
        _prepare(client, spec, tmp_path)  # type: ignore[arg-type]
    assert client.uploads == []


def test_a_csv_as_dataset_is_refused_at_its_pointer_with_the_formats(tmp_path):
    (tmp_path / "table.csv").write_text("a,b\\n1,2\\n")
    spec = {"student": {"arch": "mlp"}, "dataset": {"name": "npz", "path": "table.csv"}}
    client = FakeClient()
    with pytest.raises(CLIError) as info:
        _prepare(client, spec, tmp_path)  # type: ignore[arg-type]
    message = str(info.value)
    assert "/dataset/path: table.csv is not a dataset" in message
    assert ".npz" in message and "imagefolder" in message and ".jsonl" in message
    assert client.uploads == [] and client.validated == []


def test_a_csv_as_checkpoint_is_not_called_a_pickle(tmp_path):
    (tmp_path / "table.csv").write_text("a,b\\n1,2\\n")
    spec = {
        "teacher": {"arch": "mlp", "checkpoint": "table.csv"},
        "student": {"arch": "mlp"},
        "dataset": {"name": "digits"},
    }
    with pytest.raises(CLIError) as info:
        _prepare(FakeClient(), spec, tmp_path)  # type: ignore[arg-type]
    message = str(info.value)
    assert "/teacher/checkpoint: table.csv is not a checkpoint" in message
    assert "safetensors" in message and "Python objects" not in message


def test_a_missing_relative_path_says_where_it_was_looked_for(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = {
        "teacher": {"arch": "mlp", "checkpoint": "out/teacher.safetensors"},
        "student": {"arch": "mlp"},
        "dataset": {"name": "digits"},
    }
    with pytest.raises(local_files.LocalFileError) as info:
        local_files.find(spec, tmp_path / "specs")
    ((pointer, message),) = info.value.errors
    assert pointer == "/teacher/checkpoint"
    assert "relative to the current folder" in message and str(tmp_path) in message
    assert "file_..." in message  # and what else it could be


def test_a_folder_is_refused_with_the_zip_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pets").mkdir()
    spec = {"student": {"arch": "mlp"}, "dataset": {"name": "imagefolder", "path": "pets"}}
    with pytest.raises(local_files.LocalFileError, match=r"zip -r pets.zip pets"):
        local_files.find(spec, tmp_path)
