"""The README's quick start, through the CLI and the client, twice."""

from __future__ import annotations

import json
import re

import pytest

from tests.doc_snippets.blocks import block
from tests.doc_snippets.conftest import Sandbox, job_id


@pytest.mark.integration
@pytest.mark.slow(seconds=164)
def test_the_readmes_quick_start_twice_through_the_cli_and_the_client(sandbox: Sandbox) -> None:
    """As a user does: the tour, then the tour again in the same folder. The second
    run overwrites its downloads and uploads no second copy of a file."""
    first, *rest = block("README.md: .venv/bin/kd submit examples/quickstart_teacher").splitlines()
    for _ in range(2):
        teacher = job_id(sandbox.sh(first))
        out = sandbox.sh("\n".join(rest).replace("TEACHER_JOB_ID", teacher))
        assert "succeeded" in out and "quickstart-distill" in out
        assert (sandbox.root / "out/quickstart-teacher/student.safetensors").is_file()
        printed = sandbox.python(block("README.md: from kdservice.client import Client"))
        assert re.search(r"^submitted job_\w+$", printed, re.M) and "epoch 1/" in printed
        assert printed.strip().splitlines()[-1] == "succeeded"
    files = json.loads(sandbox.sh(".venv/bin/kd files list --json"))
    digests = [f["sha256"] for f in files]
    assert digests and len(digests) == len(set(digests)), "a file was uploaded twice"
    sandbox.sh(block("README.md: .venv/bin/kdcore train examples/quickstart_teacher"))
    report = json.loads((sandbox.root / "out/quickstart-distill/report.json").read_text())
    assert report["teacher_preflight"]["passed"] is True
