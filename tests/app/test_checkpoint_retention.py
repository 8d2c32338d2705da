"""A job keeps its newest KD_KEEP_CHECKPOINTS checkpoints (rows and files), plus the
one its attempt resumed from and any a retry resumes from."""

import pytest

from app.db.models import Checkpoint, Job
from app.db.session import session_scope
from app.services.checkpoints import prune_checkpoints
from app.services.job_reads import list_checkpoints
from tests.app.conftest import build_api, make_settings, tiny_job
from worker.supervisor import claim_and_run

pytestmark = pytest.mark.integration  # a real training process


def test_a_run_keeps_its_newest_two_checkpoints_rows_and_files(tmp_path):
    gen = build_api(make_settings(tmp_path))
    api = next(gen)
    try:
        job_id = api.post("/v1/jobs", json=tiny_job(training={"epochs": 5})).json()["id"]
        assert claim_and_run(api.settings, job_id) == "succeeded"
        rows = api.get(f"/v1/jobs/{job_id}/checkpoints").json()
        assert [r["epoch"] for r in rows] == [4, 5]
        on_disk = sorted(p.name for p in (api.settings.jobs_dir / job_id / "checkpoints").iterdir())
        assert on_disk == ["epoch4.pt", "epoch5.pt"]
        # a retry from the last checkpoint takes a kept one
        retry = api.post(f"/v1/jobs/{job_id}/retry", params={"from_checkpoint": True}).json()
        assert retry["resume_checkpoint_id"] == rows[-1]["id"]
    finally:
        gen.close()


def _rows(session, job_id, steps):
    for i, step in enumerate(steps):
        path = f"/ckpt/{job_id}/epoch{i + 1}.pt"
        session.add(
            Checkpoint(
                id=f"ckpt_{job_id}_{step}",
                job_id=job_id,
                attempt=1,
                epoch=i + 1,
                step=step,
                path=path,
                bytes=1,
            )
        )
    session.flush()


def test_prune_spares_the_resumed_one_and_those_a_retry_uses(api):
    job_id = api.post("/v1/jobs", json=tiny_job()).json()["id"]
    retry_id = api.post("/v1/jobs", json=tiny_job()).json()["id"]
    with session_scope(api.settings.db_url) as session:
        _rows(session, job_id, [10, 20, 30, 40, 50, 60])
        session.get(Job, retry_id).resume_checkpoint_id = f"ckpt_{job_id}_10"
        session.flush()
        doomed = prune_checkpoints(session, job_id, keep=2, protect_steps={30})
        assert doomed == [f"/ckpt/{job_id}/epoch2.pt", f"/ckpt/{job_id}/epoch4.pt"]
        assert [c.step for c in list_checkpoints(session, job_id)] == [10, 30, 50, 60]
        # nothing to do when there are no more than `keep`
        assert prune_checkpoints(session, job_id, keep=6, protect_steps=set()) == []


def test_a_location_a_kept_row_shares_is_not_deleted(api):
    """An attempt that resumed from an older checkpoint rewrites epochN.pt at the same
    path: the older row goes, the file stays with the newer row."""
    job_id = api.post("/v1/jobs", json=tiny_job()).json()["id"]
    with session_scope(api.settings.db_url) as session:
        _rows(session, job_id, [10, 20])
        session.add(
            Checkpoint(
                id="ckpt_again",
                job_id=job_id,
                attempt=2,
                epoch=2,
                step=21,
                path=f"/ckpt/{job_id}/epoch2.pt",
                bytes=1,
            )
        )
        session.flush()
        assert prune_checkpoints(session, job_id, keep=1, protect_steps=set()) == [
            f"/ckpt/{job_id}/epoch1.pt"
        ]
        assert [c.id for c in list_checkpoints(session, job_id)] == ["ckpt_again"]
