"""A sandbox per test module: a folder as a user's checkout looks after `make run`,
with `kd serve` on the embedded default in it.

Its jobs train in a thread of that `kd serve` (worker.launch, `KD_TRAINING_LAUNCH=thread`):
the same kdcore run, messages, records and files, without a new interpreter's imports per
job (about a third of these tests' time). What the snippets show is what the service
records and writes; the training process itself, under the same default `kd serve`, is
run by tests/deploy/test_wheel.py (the installed `kd serve` on SQLite and `kd worker` on
PostgreSQL) and tests/faults/."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.doc_snippets.blocks import ROOT
from tests.support.procs import TRAINING_IN_A_THREAD, serve


class Sandbox:
    """A folder as a user's checkout looks after `make run`: the examples, `.venv`
    (this environment's), and `kd serve` on the embedded default in it."""

    def __init__(self, root: Path, url: str):
        self.root, self.url = root, url
        base = {k: v for k, v in os.environ.items() if not k.startswith("KD_")}
        self.env = {**base, "KD_URL": url, "KD_CONFIG": str(root / "none.json")}
        self.env["PATH"] = f"{Path(sys.executable).parent}:{base.get('PATH', '')}"

    def sh(self, script: str, timeout: float = 900) -> str:
        script = script.replace("127.0.0.1:8000", self.url.removeprefix("http://"))
        done = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", script],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, f"{script}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.stdout

    def python(self, code: str, timeout: float = 900) -> str:
        return self.sh(f"{sys.executable} - <<'PYTHON'\n{code}\nPYTHON", timeout)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    root = tmp_path_factory.mktemp("checkout")
    for folder in ("examples", "docs"):  # what a checkout has that the blocks use
        subprocess.run(["cp", "-r", str(ROOT / folder), str(root / folder)], check=True)
    (root / ".venv").symlink_to(Path(sys.executable).parents[1])
    proc, url = serve(
        {
            "KD_DATA_DIR": str(root / "data"),
            "KD_DATABASE_URL": "",
            "KD_BROKER_URL": "",
            **TRAINING_IN_A_THREAD,
        },
        root / "serve.log",
    )
    try:
        yield Sandbox(root, url)
    finally:
        proc.stop()


def job_id(output: str) -> str:
    return re.findall(r"^(job_\w+)$", output, re.M)[0]
