"""The installed form, as users get it: the wheel built from this tree and installed into
a fresh virtual environment outside the repository, with the Dockerfile's own two
commands (read from it, in order), and every role started from there: `kd keys create`,
`kd migrate` on SQLite and PostgreSQL, `kd serve` (local executor and Celery), `kd worker`,
a job to `succeeded`, and `kdcore` on an example.

No network: the wheel is built without build isolation and installed with
`--no-index --no-deps`; its dependencies come from this test's environment through one
`.pth` line (so the environment holds this project only as the wheel: checked)."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import site
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from tests.app.conftest import create_pg_database, drop_pg_database
from tests.support.procs import Proc, serve
from tests.support.specs import tiny_job

pytestmark = [pytest.mark.integration, pytest.mark.slow(seconds=85)]

ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIST = "/dist"  # where the Dockerfile's build stage writes the wheel
REDIS_DB = 7
# what this test adds to the Dockerfile's commands, and why: offline here
OFFLINE_BUILD = ("pip wheel ", "pip wheel --no-build-isolation ")
OFFLINE_INSTALL = ("pip install ", "pip install --no-index --no-deps ")


@dataclass(frozen=True)
class Instruction:
    stage: str
    keyword: str
    args: str


def dockerfile() -> list[Instruction]:
    """The Dockerfile's instructions in order (continuations joined), with their stage."""
    text = (ROOT / "Dockerfile").read_text()
    logical: list[str] = []
    pending = ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(" ".join((pending + line).split()))
        pending = ""
    out, stage = [], ""
    for line in logical:
        keyword, _, args = line.partition(" ")
        if keyword == "FROM":
            stage = args.split(" AS ")[-1] if " AS " in args else args
        out.append(Instruction(stage, keyword, args))
    return out


def run_commands(stage: str) -> list[str]:
    return [i.args for i in dockerfile() if i.stage == stage and i.keyword == "RUN"]


def build_command() -> str:
    (command,) = [c for c in run_commands("build") if "pip wheel" in c]
    return command


def install_command() -> str:
    (command,) = [c for c in run_commands("runtime") if "kdservice-" in c and "pip install" in c]
    return command


def offline(command: str, change: tuple[str, str], dist: Path) -> str:
    assert command.count(change[0]) == 1, command
    return command.replace(change[0], change[1]).replace(DOCKER_DIST, shlex.quote(str(dist)))


def test_the_dockerfile_builds_the_wheel_then_installs_only_it_as_a_non_root_user():
    steps = dockerfile()
    stages = [i.args for i in steps if i.keyword == "FROM"]
    assert [s.split(" AS ")[-1] for s in stages] == ["build", "runtime"]
    build = [(i.keyword, i.args) for i in steps if i.stage == "build"]
    assert ("COPY", ". .") in build
    assert build.index(("COPY", ". .")) < build.index(("RUN", build_command()))
    assert f"--wheel-dir {DOCKER_DIST}" in build_command()
    runtime = [(i.keyword, i.args) for i in steps if i.stage == "runtime"]
    copies = [args for keyword, args in runtime if keyword == "COPY"]
    assert copies == [f"--from=build {DOCKER_DIST} {DOCKER_DIST}"]  # no source in the image
    order = [keyword for keyword, _ in runtime]
    install_at = runtime.index(("RUN", install_command()))
    assert runtime.index(("COPY", copies[0])) < install_at
    user_at = order.index("USER")
    assert install_at < user_at and "RUN" not in order[user_at:]  # installs ran as root only
    assert runtime[user_at][1] not in ("root", "0")
    assert ("ENTRYPOINT", '["kd"]') in runtime and ("CMD", '["serve"]') in runtime
    # a CPU image and a CUDA image: one build argument, both values handled
    assert ("ARG", "TORCH_FLAVOUR=cuda") in runtime
    torch = next(args for keyword, args in runtime if keyword == "RUN" and "torch" in args)
    assert "cuda)" in torch and "cpu)" in torch and "--index-url" in torch


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    work: Path  # a folder outside the repository, where the commands run

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def env(self, **extra: str) -> dict[str, str]:
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("KD_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")
        }
        return {**base, "PATH": f"{self.bin}:{base.get('PATH', '')}", **extra}

    def run(self, *args: str, env: dict[str, str], timeout: float = 300):
        return subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            cwd=self.work,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def _copy_tree(dest: Path) -> None:
    """The files git would ship (tracked, and new ones not ignored): no .venv, no data."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    top = tmp_path_factory.mktemp("installed")
    source, dist, venv, work = (top / n for n in ("src", "dist", "venv", "work"))
    for folder in (source, dist, work):
        folder.mkdir()
    _copy_tree(source)
    here = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    build = offline(build_command(), OFFLINE_BUILD, dist)
    out = subprocess.run(
        ["bash", "-c", build], cwd=source, env=here, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (wheel,) = dist.glob("kdservice-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    packages = venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    # this environment's package folders (its own, and any a .pth of it adds): the
    # dependencies, never the checkout (the editable install's finder is not loaded)
    folders = [p for p in sys.path if p.endswith("site-packages")] or site.getsitepackages()
    (packages / "site-packages" / "test_dependencies.pth").write_text("\n".join(folders) + "\n")
    result = Installed(wheel, venv, work)
    install = offline(install_command(), OFFLINE_INSTALL, dist)
    out = subprocess.run(
        ["bash", "-c", install], cwd=work, env=result.env(), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return result


def test_the_environment_holds_the_project_only_as_the_wheel(installed: Installed):
    code = (
        "import json, app, kdcore, kdservice, worker\n"
        "print(json.dumps([m.__file__ for m in (app, kdcore, kdservice, worker)]))"
    )
    out = installed.run("python", "-c", code, env=installed.env())
    assert out.returncode == 0, out.stderr
    for path in json.loads(out.stdout):
        assert Path(path).is_relative_to(installed.venv), path
    names = zipfile.ZipFile(installed.wheel).namelist()
    assert "app/db/migrations/env.py" in names
    assert "app/db/migrations/versions/0001_initial_schema.py" in names
    assert "app/web/static/index.html" in names
    assert "app/web/static/vendor/swagger-ui-5.35.0/swagger-ui-bundle.js" in names  # /docs
    assert not [n for n in names if n.startswith(("tests/", "bench/", "examples/"))]
    from importlib.metadata import version

    for command in ("kd", "kdcore"):
        out = installed.run(command, "--version", env=installed.env())
        assert out.stdout.strip() == f"{command} {version('kdservice')}", out.stderr


def _run_one_job(base: str, key: str, *procs: Proc) -> dict:
    """POST the tiny job and wait for it to end. A process of the service that exits
    meanwhile fails at once; past the deadline, the job as it stands. Either way the
    tails of the processes' logs say where it stopped."""

    def tails() -> str:
        return "\n".join(f"--- {p.log.name}:\n{p.log.read_text()[-4000:]}" for p in procs)

    with httpx.Client(
        base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30, trust_env=False
    ) as client:
        created = client.post("/v1/jobs", json=tiny_job(name="from-the-wheel"))
        assert created.status_code == 201, created.text
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            job = client.get(f"/v1/jobs/{created.json()['id']}").json()
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return job
            exited = [p.log.name for p in procs if p.popen.poll() is not None]
            assert not exited, f"{exited} exited while the job was {job['status']}\n{tails()}"
            time.sleep(1)
        events = client.get(f"/v1/jobs/{created.json()['id']}/events").text[-3000:]
    raise AssertionError(f"the job did not end within 300 s: {job}\n{events}\n{tails()}")


@contextlib.contextmanager
def served(installed: Installed, env: dict[str, str], log: Path) -> Iterator[tuple[str, Proc]]:
    proc, base = serve(env, log, command=[str(installed.bin / "kd")])
    try:
        yield base, proc
    finally:
        proc.stop()


def test_the_installed_kd_on_sqlite_creates_a_key_migrates_serves_and_runs_a_job(
    installed: Installed, tmp_path: Path
):
    env = installed.env(KD_DATA_DIR=str(tmp_path / "data"))
    keys = installed.run("kd", "keys", "create", "--tenant", "wheel", env=env)
    assert keys.returncode == 0, keys.stderr  # a fresh data folder: SQLite made and upgraded
    key = keys.stdout.split()[1]
    migrate = installed.run("kd", "migrate", env=env)
    assert migrate.returncode == 0, migrate.stderr
    assert "database at head" in migrate.stderr
    with served(installed, env, tmp_path / "serve.log") as (base, proc):
        job = _run_one_job(base, key, proc)
        assert job["status"] == "succeeded", (job, proc.log.read_text()[-3000:])
        assert httpx.get(f"{base}/", trust_env=False).status_code == 200  # the dashboard


def test_the_installed_kd_on_postgresql_migrates_and_a_worker_runs_a_job(
    installed: Installed, tmp_path: Path
):
    database = create_pg_database()
    redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB).flushdb()
    env = installed.env(
        KD_ENVIRONMENT="production",
        KD_DATA_DIR=str(tmp_path / "data"),
        KD_DATABASE_URL=f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}",
        KD_BROKER_URL=f"redis://127.0.0.1:6379/{REDIS_DB}",
    )
    worker = None
    try:
        migrate = installed.run("kd", "migrate", env=env)
        assert migrate.returncode == 0, migrate.stderr
        keys = installed.run("kd", "keys", "create", "--tenant", "wheel", env=env)
        assert keys.returncode == 0, keys.stderr
        worker = Proc(
            ["worker", "--hostname", "wheel@test", "--loglevel", "info"],
            env,
            tmp_path / "worker.log",
            command=[str(installed.bin / "kd")],
        )
        with served(installed, env, tmp_path / "serve.log") as (base, api):
            ready = httpx.get(f"{base}/readyz", trust_env=False).json()
            assert ready["checks"] == {"database": "ok", "broker": "ok"}
            key = keys.stdout.split()[1]
            job = _run_one_job(base, key, worker, api)
            assert job["status"] == "succeeded", (job, worker.log.read_text()[-3000:])
    finally:
        if worker is not None:
            worker.stop()
        drop_pg_database(database)


def test_the_installed_kdcore_trains_and_distils_the_quick_start(installed: Installed):
    shutil.copytree(ROOT / "examples", installed.work / "examples", dirs_exist_ok=True)
    env = installed.env()
    for kind, example, out in (
        ("train", "quickstart_teacher", "out/quickstart-teacher"),
        ("distill", "quickstart_distill", "out/quickstart-distill"),
    ):
        done = installed.run(
            "kdcore", kind, f"examples/{example}.json", "--out", out, env=env, timeout=600
        )
        assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((installed.work / "out/quickstart-distill/report.json").read_text())
    assert report["kind"] == "distill"
    assert (installed.work / "out/quickstart-distill/student.safetensors").is_file()
