"""docs/api.md's first job with curl, twice as written."""

from __future__ import annotations

import json

import pytest

from tests.doc_snippets.blocks import ROOT, block
from tests.doc_snippets.conftest import Sandbox


@pytest.mark.integration
@pytest.mark.slow
def test_the_curl_tour_runs_twice_as_written(sandbox: Sandbox) -> None:
    tour = block("docs/api.md: KEY=$(cat data/api_key)")  # the README points to it
    assert "docs/api.md#a-first-job-with-curl" in (ROOT / "README.md").read_text()
    digests = []
    for _ in range(2):  # a second run in the same folder works too
        out = sandbox.sh(tour)
        assert "succeeded" in out
        digest, name = out.strip().splitlines()[-1].split()
        assert len(digest) == 64 and name == "out/student.safetensors"
        digests.append(digest)
    assert (sandbox.root / "out/student.safetensors").is_file()
    assert not (sandbox.root / "student.safetensors").exists()  # nothing in the root
    # step 2 again, as a user re-running it: the same job back, not an error
    prelude = tour.split("# 1.")[0]
    step2 = "# 2." + tour.split("# 2.")[1].split("# 3.")[0]
    jobs = json.loads(sandbox.sh(".venv/bin/kd jobs --json"))
    teacher = next(j["id"] for j in jobs if j["name"] == "digits-teacher")
    script = prelude + f"TEACHER={teacher}\n" + step2 + 'echo "$JOB"\n'
    again = [sandbox.sh(script).strip().splitlines()[-1] for _ in range(2)]
    assert again[0] == again[1] and again[0].startswith("job_")
