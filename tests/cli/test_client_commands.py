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


def _job(status, transitions, error=None):
    from kdservice.client.models import Job

    return Job.model_validate(
        {
            "id": "job_1",
            "name": "n",
            "kind": "train",
            "status": status,
            "attempt": 1,
            "max_attempts": 3,
            "created_at": "2026-11-29T10:00:00Z",
            "started_at": None,
            "finished_at": None,
            "queue_position": None,
            "progress": {},
            "metrics": {},
            "error": error,
            "status_transitions": [
                {"from_status": None, "to_status": s, "reason": r, "attempt": 1, "at": at}
                for s, r, at in transitions
            ],
            "retry_of": None,
            "resume_checkpoint_id": None,
            "spec": {},
            "report": None,
        }
    )


def test_the_end_of_a_job_that_did_not_succeed_says_what_happened():
    from kdservice.cli.render import outcome

    cancelled = _job(
        "cancelled",
        [
            ("queued", "submitted", "2026-11-29T10:00:00.1Z"),
            ("running", "claimed", "2026-11-29T10:00:01.5Z"),
            ("cancelling", "cancel requested by the client", "2026-11-29T10:00:04.25Z"),
            ("cancelled", "the run stopped", "2026-11-29T10:00:05.75Z"),
        ],
    )
    assert outcome(cancelled) == (
        "job job_1 was cancelled by request at 2026-11-29 10:00:05 UTC (the run stopped)"
    )
    failed = _job("failed", [("failed", "crashed", "2026-11-29T10:01:00Z")], error="CUDA OOM")
    assert outcome(failed) == "job job_1 failed at 2026-11-29 10:01:00 UTC: CUDA OOM"
    assert outcome(_job("failed", [])) == "job job_1 failed: no reason recorded"
