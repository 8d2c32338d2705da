"""The `kd` CLI and the Python client end to end against a real `kd serve` on the
embedded default (SQLite + local executor), run from the directory the server keeps
its data in, so the CLI finds the saved key with no flags (only KD_URL for the port)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kdservice.client import ApiError, AsyncClient, Client
from tests.support.procs import TRAINING_IN_A_THREAD, CuttingProxy, free_port, serve

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
QUICK = [
    "--set",
    "training.epochs=2",
    "--set",
    "dataset.image_size=8",
    "--set",
    "dataset.max_samples=500",
]


class Served:
    def __init__(self, workdir: Path, url: str, key: str):
        self.workdir, self.url, self.key = workdir, url, key

    def kd(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run `kd ...` as a user would: from the service's directory, no key given."""
        base = {k: v for k, v in os.environ.items() if not k.startswith("KD_")}
        return subprocess.run(
            [sys.executable, "-m", "kdservice.cli", *args],
            cwd=self.workdir,
            env={
                **base,
                "KD_URL": self.url,
                "KD_CONFIG": str(self.workdir / "none.json"),
                **(env or {}),
            },
            capture_output=True,
            text=True,
            timeout=300,
        )

    def client(self, **kw) -> Client:  # type: ignore[no-untyped-def]
        return Client(self.url, self.key, **kw)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    workdir = tmp_path_factory.mktemp("served")
    shutil.copytree(ROOT / "examples", workdir / "examples")
    env = {"KD_DATA_DIR": str(workdir / "data"), "KD_DATABASE_URL": "", "KD_BROKER_URL": ""}
    server, url = serve({**env, **TRAINING_IN_A_THREAD}, workdir / "serve.log")
    try:
        key = (workdir / "data" / "api_key").read_text().strip()
        yield Served(workdir, url, key)
    finally:
        server.stop()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cli_session_submit_watch_download_distil(served: Served) -> None:
    # a teacher: submit + live watch, ending with the report
    r = served.kd(
        "submit",
        "examples/digits_teacher.json",
        *QUICK,
        "--set",
        "student.arch=small_cnn",
        "--watch",
    )
    assert r.returncode == 0, r.stderr
    teacher_id = r.stdout.splitlines()[0].strip()
    assert teacher_id.startswith("job_")
    assert "student epoch 2/2" in r.stdout and "acc " in r.stdout  # per-epoch progress lines
    assert "succeeded" in r.stdout and "report" in r.stdout

    r = served.kd("jobs")
    assert r.returncode == 0 and teacher_id in r.stdout and "succeeded" in r.stdout
    shown = json.loads(served.kd("show", teacher_id, "--json").stdout)
    assert shown["status"] == "succeeded" and shown["report"]["student"]["arch"] == "small_cnn"

    events = [json.loads(line) for line in served.kd("events", teacher_id).stdout.splitlines()]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert sum(e["type"] == "epoch" for e in events) == 2

    # download: the safetensors and its config, digests as the server announced
    r = served.kd("download", teacher_id, "--out", "out/teacher")
    assert r.returncode == 0, r.stderr
    weights = served.workdir / "out/teacher/student.safetensors"
    assert sha256(weights) == shown["report"]["files"]["safetensors"]["sha256"]
    assert (served.workdir / "out/teacher/student.json").is_file()

    # the distillation example names that local file: `kd submit` uploads it first
    r = served.kd(
        "submit", "examples/digits_distill.json", *QUICK,
        "--set", "teacher.arch=small_cnn", "--set", "student.arch=mlp_small",
        "--set", "baseline=false", "--watch",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "uploaded out/teacher/student.safetensors as file_" in r.stderr
    distill_id = r.stdout.splitlines()[0].strip()
    job = json.loads(served.kd("show", distill_id, "--json").stdout)
    assert job["spec"]["teacher"]["checkpoint"].startswith("file_")
    assert job["report"]["teacher"]["arch"] == "small_cnn"
    assert "teacher" in r.stdout and "compression" in r.stdout

    # ONNX export of the distilled student
    r = served.kd("download", distill_id, "--format", "onnx", "--out", "out/onnx")
    assert r.returncode == 0, r.stderr
    onnx_path = served.workdir / "out/onnx/student.onnx"
    assert sha256(onnx_path) == job["report"]["files"]["onnx"]["sha256"]


def test_cli_download_resumes_a_partial_file(served: Served) -> None:
    with served.client() as client:
        example = json.loads((served.workdir / "examples/digits_teacher.json").read_text())
        spec = {**example, "name": "resume-me", "student": {"arch": "small_cnn"}}
        job = client.submit({**spec, "training": {"epochs": 1}})
        job = client.wait(job.id, timeout_s=240)
        assert job.status == "succeeded"
        art = next(a for a in client.artifacts(job.id) if a.name == "student.safetensors")
        full = client.request("GET", art.download_url).content
    out = served.workdir / "resume"
    out.mkdir()
    (out / "student.safetensors.part").write_bytes(full[: len(full) // 2])  # an interrupted run
    r = served.kd("download", job.id, "--out", "resume")
    assert r.returncode == 0, r.stderr
    assert (out / "student.safetensors").read_bytes() == full
    assert not (out / "student.safetensors.part").exists()


def test_cli_cancel_watch_retry_files_login_and_errors(served: Served) -> None:
    long = served.kd(
        "submit", "examples/digits_teacher.json", "--set", "training.epochs=200", "--name", "long"
    )
    job_id = long.stdout.strip()
    r = served.kd("cancel", job_id)
    assert r.returncode == 0 and ("cancel" in r.stderr)
    r = served.kd("watch", job_id)
    # a job that did not succeed: exit 1, and what happened, when, why
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 1 and last.startswith(
        f"kd: error: job {job_id} was cancelled by request at "
    )
    assert "no error message" not in r.stderr
    r = served.kd("retry", job_id)
    assert r.returncode == 0 and r.stdout.strip().startswith("job_") and r.stdout.strip() != job_id
    served.kd("cancel", r.stdout.strip())

    ckpt = served.workdir / "out/teacher/student.safetensors"
    r = served.kd("files", "upload", str(ckpt))
    file_id = r.stdout.strip()
    assert r.returncode == 0 and file_id.startswith("file_")
    listed = served.kd("files", "list").stdout
    row = next(ln for ln in listed.splitlines() if file_id in ln)
    assert "checkpoint" in row and f"{ckpt.stat().st_size:,}" in row and "UTC" in row
    # a spec naming the same file reuses the upload (by sha256) instead of a second copy
    spec = served.workdir / "reuse.json"
    spec.write_text(
        json.dumps(
            {
                "kind": "distill",
                "teacher": {"arch": "cifar_resnet20", "checkpoint": str(ckpt)},
                "student": {"arch": "small_cnn"},
                "dataset": {"builtin": "digits", "image_size": 16},
                "distilation": {},  # a typo: refused before any upload
            }
        )
    )
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()

    def copies() -> list[str]:
        held = json.loads(served.kd("files", "list", "--json").stdout)
        return sorted(f["id"] for f in held if f["sha256"] == digest)

    before = copies()
    assert file_id in before
    r = served.kd("submit", str(spec))
    assert r.returncode == 2 and "Did you mean 'distillation'" in r.stderr
    assert "already uploaded (same sha256), reused" in r.stderr
    assert copies() == before  # no new copy
    r = served.kd("files", "delete", file_id)
    assert r.returncode == 0 and file_id not in served.kd("files", "list").stdout
    r = served.kd("files", "delete", file_id)
    assert r.returncode == 2 and "404" in r.stderr

    # errors: one line on stderr, conventional exit codes
    for args, env, code, text in [
        (["show", "job_nope"], None, 2, "404"),
        (["jobs"], {"KD_API_KEY": "kd_wrong"}, 3, "401"),
        (["jobs"], {"KD_URL": f"http://127.0.0.1:{free_port()}"}, 3, "cannot reach"),
        (["submit", "missing.json"], None, 2, "no such spec file"),
        (
            ["submit", "examples/digits_teacher.json", "--set", "training.epochs=0"],
            None,
            2,
            "/training/epochs",
        ),
        (["download", job_id, "--format", "pickle"], None, 2, "--format"),
        (["jobs", "--status", "done"], None, 2, "succeeded"),
        (["artifacts", job_id, "--name", "nope.bin"], None, 2, "has no artifact"),
        (["nosuchcommand"], None, 2, "No such command"),
    ]:
        r = served.kd(*args, env=env)
        assert r.returncode == code, (args, r.returncode, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("kd: error:") and text in lines[0], r.stderr

    # kd login saves URL and key (0600); later commands need neither
    config = served.workdir / "kd-config.json"
    r = served.kd("login", "--key", served.key, env={"KD_CONFIG": str(config)})
    assert r.returncode == 0 and "tenant 'default'" in r.stderr
    assert oct(config.stat().st_mode & 0o777) == "0o600"
    r = subprocess.run(
        [sys.executable, "-m", "kdservice.cli", "jobs", "--json"],
        cwd="/",  # no data/api_key here, no KD_URL: everything from the config file
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("KD_")},
            "KD_CONFIG": str(config),
        },
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and job_id in r.stdout


def test_python_client_sync_and_async(served: Served) -> None:
    spec = {
        "name": "client-run",
        "kind": "train",
        "student": {"arch": "small_cnn"},
        "dataset": {"name": "digits", "image_size": 8, "max_samples": 500},
        "training": {"epochs": 4},
    }
    proxy = CuttingProxy(int(served.url.rsplit(":", 1)[1]), after_bytes=900, cuts=3)
    try:
        with Client(f"http://127.0.0.1:{proxy.port}", served.key, backoff_s=0.05) as client:
            first = client.submit(spec, idempotency_key="client-test-1")
            again = client.submit(spec, idempotency_key="client-test-1")
            assert again.id == first.id  # the repeat was answered with the same job
            with pytest.raises(ApiError) as info:
                client.submit({**spec, "name": "other"}, idempotency_key="client-test-1")
            assert info.value.status == 422
            events = list(client.events(first.id))  # through connections cut mid-stream
            assert proxy.cut >= 2
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
            assert events[-1].is_terminal and events[-1].data["status"] == "succeeded"
            job = client.wait(first.id)
            assert job.status == "succeeded" and job.progress.fraction == 1.0
            paths = client.download_outputs(
                job.id, served.workdir / "sync", ["curves.png", "report.json"]
            )
            assert [p.name for p in paths] == ["curves.png", "report.json"]
            assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert json.loads(paths[1].read_text())["student"]["arch"] == "small_cnn"
    finally:
        proxy.close()

    async def run_async() -> tuple[str, list[int], Path]:
        async with AsyncClient(served.url, served.key) as client:
            job = await client.submit({**spec, "name": "async-run"})
            seqs = [e.seq async for e in client.events(job.id)]
            done = await client.wait(job.id, timeout_s=240)
            art = next(a for a in await client.artifacts(job.id) if a.name == "student.safetensors")
            path = await client.download(art, served.workdir / "async.safetensors")
            assert sha256(path) == art.sha256
            return done.status, seqs, path

    status, seqs, path = asyncio.run(run_async())
    assert status == "succeeded" and seqs == list(range(1, len(seqs) + 1)) and path.is_file()


def test_the_client_docstring_example_runs(
    served: Served, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """kdservice/client/sync.py's docstring, run as written (URL and key from the
    environment, as a user's shell would give them)."""
    import kdservice.client.sync as sync_module

    doc = sync_module.__doc__ or ""
    code = doc[doc.index("from kdservice.client import Client") :]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KD_URL", served.url)
    monkeypatch.setenv("KD_API_KEY", served.key)
    monkeypatch.setenv("KD_CONFIG", str(tmp_path / "none.json"))
    exec(compile(code, "kdservice/client/sync.py docstring", "exec"), {})
    assert (tmp_path / "out" / "student.safetensors").stat().st_size > 0
