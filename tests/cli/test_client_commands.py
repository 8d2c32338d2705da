"""`kd submit` uploads the local files a kdcore spec names, for every model."""

from pathlib import Path
from types import SimpleNamespace

from kdservice.cli.client_commands import _upload_local_references


class FakeClient:
    def __init__(self):
        self.uploads: list[tuple[str, str]] = []

    def upload(self, path: Path, purpose: str):
        self.uploads.append((Path(path).name, purpose))
        return SimpleNamespace(id=f"file_{len(self.uploads)}")


def test_every_teachers_local_checkpoint_is_uploaded(tmp_path):
    for name in ("a.safetensors", "b.safetensors", "data.npz"):
        (tmp_path / name).write_bytes(b"x")
    spec = {
        "teachers": [
            {"arch": "mlp", "checkpoint": "a.safetensors"},
            {"arch": "mlp", "checkpoint": "file_kept"},
            {"arch": "mlp", "checkpoint": "b.safetensors"},
        ],
        "student": {"arch": "mlp"},
        "dataset": {"name": "npz", "path": "data.npz"},
    }
    client = FakeClient()
    _upload_local_references(client, spec, tmp_path)  # type: ignore[arg-type]
    assert client.uploads == [
        ("a.safetensors", "checkpoint"),
        ("b.safetensors", "checkpoint"),
        ("data.npz", "dataset"),
    ]
    assert [t["checkpoint"] for t in spec["teachers"]] == ["file_1", "file_kept", "file_2"]
    assert spec["dataset"]["path"] == "file_3"
