"""The README's small first run of a language model."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import pytest

from tests.doc_snippets.blocks import block
from tests.doc_snippets.conftest import Sandbox, job_id


@pytest.mark.integration
@pytest.mark.slow(seconds=194)
def test_the_language_model_quick_start_uses_a_train_jobs_folder_as_teacher(
    sandbox: Sandbox,
) -> None:
    """The README's small first run: a teacher made by a train job, given to the
    distillation by its artifact id, and the student's folder downloaded."""
    submit_teacher, find_folder, submit_distill, download = block(
        "README.md: .venv/bin/kd submit examples/lm_teacher.json --watch"
    ).splitlines()
    teacher = job_id(sandbox.sh(submit_teacher))
    artifact = sandbox.sh(find_folder.replace("TEACHER_JOB_ID", teacher)).strip()
    assert re.fullmatch(r"art_\w+", artifact), artifact
    out = sandbox.sh(submit_distill.replace("ARTIFACT_ID", artifact))
    distill = job_id(out)
    assert "succeeded" in out and "tokens/s" in out and "latency" not in out
    job = json.loads(sandbox.sh(f".venv/bin/kd show {distill} --json"))
    assert job["spec"]["teacher"]["checkpoint"] == artifact  # used as is, not uploaded
    report = job["report"]
    assert report["kd_gain_unit"] == "perplexity_ratio"
    assert report["teacher"]["perplexity"] < report["baseline"]["perplexity"]
    listed = sandbox.sh(download.replace("DISTILL_JOB_ID", distill))
    folder = sandbox.root / "out/lm-student/student_hf.zip"
    assert str(folder.relative_to(sandbox.root)) in listed
    with zipfile.ZipFile(folder) as zf:
        assert {"config.json", "model.safetensors"} <= {Path(n).name for n in zf.namelist()}
