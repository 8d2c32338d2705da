"""The one claim-and-run path, used by both executors (Celery task and local threads).

claim (conditional UPDATE) -> start the training child -> supervise it:
    every `heartbeat_s`: renew the lease, store progress, append throttled events,
    record checkpoints (one transaction); react to `cancelling`; kill on lost lease
-> finish: succeeded (artifacts recorded) | cancelled | failed | back to queued
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from app import logs, storage
from app.db import repository as repo
from app.db import slots
from app.db.models import Artifact, Checkpoint, Job, JobStatus, hosts_needed, new_id, utcnow
from app.db.session import session_scope
from app.nudge import nudge
from app.services import credentials, lifecycle
from app.services.checkpoints import prune_checkpoints
from app.services.job_inputs import (
    NotRunnable,
    endpoint_secret,
    fetch_dataset,
    pin_endpoint,
    resolved_spec,
    tenant_name,
    with_key_file,
)
from app.services.lifecycle import AfterCommit
from app.settings import Settings
from worker import gang, protocol, tracking
from worker.folder_lock import folder_lock
from worker.launch import Child, launch, launch_agent

log = logging.getLogger("kd.worker")
S = JobStatus
# what Supervisor.run returns besides a job status: this worker lost its lease (another
# may hold the job now), or it could not record the end (the reaper will)
LOST, UNRECORDED = "lost", "unrecorded"
MEMBER_DONE = "member done"  # a multi-host job's host whose part ended; rank 0's host ends it
PROGRESS_EVERY_S = 1.0
CONTENT_TYPES = {
    ".json": "application/json",
    ".onnx": "application/octet-stream",
    ".png": "image/png",
}


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.current_thread().name}"


@dataclass(frozen=True)
class _Start:
    attempt: int
    spec: dict[str, Any]
    resume_from: str | None
    resume_step: int | None
    tenant_id: str = ""


def claim_and_run(settings: Settings, job_id: str, wid: str | None = None) -> str | None:
    """Run the job if this call claims it; returns its final status, or None if another
    worker holds it (a duplicate message) or it is not runnable."""
    wid = wid or worker_id()
    prepared = _prepare(settings, job_id)
    if prepared is None:
        return None
    if prepared.refused is None and hosts_needed(prepared.spec) > 1:
        return _run_member(settings, job_id, wid, prepared)
    with session_scope(settings.db_url) as session:
        start = _claim(session, settings, job_id, wid, prepared.spec, prepared.refused)
    if start is None:
        return None
    if isinstance(start, AfterCommit):  # refused before training (limits, deleted file)
        start.run(settings)
        return str(start.status)
    nudge(settings.broker_url, job_id)
    token = logs.job_id.set(job_id)  # every log line of this run carries the job id
    try:
        log.info("job started", extra={"attempt": start.attempt, "worker": wid})
        status = Supervisor(
            settings,
            job_id,
            wid,
            start.attempt,
            start.spec,
            start.resume_from,
            start.resume_step,
            start.tenant_id,
            prepared.secret,
        ).run(teacher_cache(settings, start.tenant_id))
        log.info("job ended", extra={"status": status, "attempt": start.attempt})
        return status
    finally:
        logs.job_id.reset(token)


def _run_member(settings: Settings, job_id: str, wid: str, prepared: _Prepared) -> str | None:
    """This host's part of a multi-host job (worker.gang): placed with the others, or
    nothing held; then the one Supervisor, holding its slot's lease."""
    seat = gang.gather(settings, job_id, wid, prepared.spec)
    if seat is None:
        return None
    with session_scope(settings.db_url) as session:
        job = session.get(Job, job_id)
        assert job is not None
        resume = _resume_point(session, settings, job)
        if seat.node_rank == 0:  # one attempt event, and where its nodes run
            repo.append_event(
                session,
                job_id,
                "attempt",
                {
                    "attempt": seat.member.attempt,
                    "worker": wid,
                    "resume_from_step": resume[1] if resume else None,
                },
            )
            repo.append_event(session, job_id, "hosts", gang.seat_event(seat))
        tenant_id = job.tenant_id
    nudge(settings.broker_url, job_id)
    token = logs.job_id.set(job_id)
    try:
        log.info("job started", extra={"attempt": seat.member.attempt, "worker": wid})
        resume_from, resume_step = resume or (None, None)
        supervisor = Supervisor(
            settings,
            job_id,
            wid,
            seat.member.attempt,
            prepared.spec,
            resume_from,
            resume_step,
            tenant_id,
            prepared.secret,
            seat=seat,
        )
        return supervisor.run(teacher_cache(settings, tenant_id))
    finally:
        logs.job_id.reset(token)
        with session_scope(settings.db_url) as session:
            slots.release(session, seat.member.slot_id)


@dataclass(frozen=True)
class _Prepared:
    spec: dict[str, Any]
    refused: str | None  # why it cannot run, if it cannot
    secret: str | None = field(default=None, repr=False)  # a teacher endpoint's key


def _prepare(settings: Settings, job_id: str) -> _Prepared | None:
    """Before the claim, holding no lock and no lease (sizing a job loads torch, which
    can take longer than a lease): the spec with this host's copies of its files, and
    why it cannot run, if it cannot. None: the job is not queued."""
    with session_scope(settings.db_url) as session:
        job = session.get(Job, job_id)
        if job is None or job.status != S.QUEUED:
            return None
        try:
            spec = resolved_spec(session, settings, job)
            secret = endpoint_secret(session, settings, job.tenant_id, spec)
        except (FileNotFoundError, NotRunnable) as exc:
            return _Prepared({}, str(exc))
        tenant = tenant_name(session, job.tenant_id)
    try:  # a dataset by reference: an S3 prefix is copied here, holding no transaction
        spec = pin_endpoint(settings, fetch_dataset(settings, tenant, spec))
    except (FileNotFoundError, NotRunnable) as exc:
        return _Prepared({}, str(exc))
    return _Prepared(spec, _over_limits(settings, spec), secret)


def _claim(
    session: Session,
    settings: Settings,
    job_id: str,
    wid: str,
    spec: dict[str, Any],
    refused: str | None,
) -> _Start | AfterCommit | None:
    """Claim and record the attempt, in one short transaction; a job that cannot run
    (`refused`) fails here instead (the AfterCommit of that)."""
    job = lifecycle.claim(session, job_id, wid, settings.lease_s)
    if job is None:
        return None
    if refused:
        held = {"worker_id": wid, "attempt": job.attempt}
        return lifecycle.transition(
            session, job_id, (S.RUNNING,), S.FAILED, refused, error=refused, **held
        )
    resume = _resume_point(session, settings, job)
    repo.append_event(
        session,
        job_id,
        "attempt",
        {"attempt": job.attempt, "worker": wid, "resume_from_step": resume[1] if resume else None},
    )
    resume_from, resume_step = resume or (None, None)
    return _Start(job.attempt, spec, resume_from, resume_step, job.tenant_id)


def _over_limits(settings: Settings, spec: dict[str, Any]) -> str | None:
    """The submission checks again, on this host's copy of the files: the limits may
    have been lowered, or the job may come from an older API."""
    from app.services.admission import limits
    from kdcore.checks.cost import as_built, check_limits, local_folders
    from kdcore.checks.validate import parse_spec
    from kdcore.errors import KDError

    try:
        parsed = parse_spec(spec)
        problems = check_limits(as_built(parsed, local_folders(parsed)), limits(settings))
    except KDError as exc:
        return str(exc)
    return "; ".join(f"{loc}: {msg}" for loc, msg in problems) or None


def threads_per_job(settings: Settings) -> int:
    """CPU threads for one training process: `KD_JOB_THREADS`, else this host's usable
    cores split between the jobs this process runs at once (the local executor's
    threads; a Celery worker runs one), so concurrent jobs do not oversubscribe."""
    if settings.job_threads:
        return settings.job_threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    slots = 1 if settings.broker_url else max(1, settings.local_workers)
    return max(1, (cores or 1) // slots)


def teacher_cache(settings: Settings, tenant_id: str) -> Path | None:
    """The tenant's teacher-cache folder for a job about to start, after trimming this
    host's cache to its bound (least recently used keys first); None when off."""
    if not settings.teacher_cache_bytes or not tenant_id:
        return None
    from kdcore.image.teacher_cache import prune

    root = settings.teacher_cache_dir
    tenants = [p for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
    removed = prune(tenants, settings.teacher_cache_bytes)
    if removed:
        log.info("teacher cache trimmed", extra={"removed": len(removed)})
    return root / tenant_id


def run_next(settings: Settings, pools: set[str] | None, candidates: int = 3) -> bool:
    """Claim and run the next job of `pools` in fair order (repository.queued_job_ids);
    returns whether one ran. Both executors start jobs through here."""
    with session_scope(settings.db_url) as session:
        job_ids = repo.queued_job_ids(session, pools, limit=candidates)
    return any(claim_and_run(settings, job_id) is not None for job_id in job_ids)


def _resume_point(session: Any, settings: Settings, job: Job) -> tuple[str, int] | None:
    """The newest checkpoint of this job's main phase (an earlier attempt), else the one a
    retry asked for. Checkpoints are recorded only after their file was renamed."""
    from app.services.job_reads import list_checkpoints

    for ckpt in reversed(list_checkpoints(session, job.id)):
        if storage.exists(settings, ckpt.path):
            return str(storage.local_copy(settings, ckpt.path)), ckpt.step
    if job.resume_checkpoint_id:
        ckpt = session.get(Checkpoint, job.resume_checkpoint_id)
        if ckpt is not None and storage.exists(settings, ckpt.path):
            return str(storage.local_copy(settings, ckpt.path)), ckpt.step
    return None


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        job_id: str,
        wid: str,
        attempt: int,
        spec: dict[str, Any],
        resume_from: str | None,
        resume_step: int | None = None,
        tenant_id: str = "",
        secret: str | None = None,
        seat: gang.Seat | None = None,
    ):
        self.settings, self.job_id, self.worker, self.attempt = settings, job_id, wid, attempt
        self.seat = seat  # a multi-host job: this host's place (worker.gang)
        self.secret = secret  # a teacher endpoint's key: in a file for this attempt only
        self.tenant_id = tenant_id  # MLflow runs go to the tenant's own experiment
        self.spec, self.resume_from = spec, resume_from
        self.resume_step = resume_step  # its checkpoint outlives the pruning
        self.out_dir = settings.jobs_dir / job_id
        self.messages: queue.Queue[dict[str, Any] | None] = queue.Queue()  # None: output ended
        self.pending: list[tuple[str, dict[str, Any]]] = []
        self.checkpoints: list[dict[str, Any]] = []
        self.progress: dict[str, Any] | None = None
        self.student_metrics: dict[str, float] = {}
        self.baseline_metrics: dict[str, float] = {}
        self.final: dict[str, Any] | None = None
        self.final_at = 0.0  # when the last word came
        self.cancel_sent_at: float | None = None
        self.killed = False
        self.timed_out = False
        # the spec's own limit, else the service's default: no run holds a worker forever
        self.max_runtime_s = spec.get("max_runtime_s") or settings.default_max_runtime_s
        self.grace_s = settings.cancel_grace_s
        self.last_progress_event = 0.0
        self.waited_flush = time.monotonic()  # the claim has just renewed the lease

    def run(self, teacher_cache: Path | None = None) -> str:
        """The attempt, holding its job folder alone (worker.folder_lock): an earlier
        attempt whose lease expired may still have a process there; wait for it."""
        lock = f".node{self.seat.node_rank}.lock" if self.seat else ".attempt.lock"
        with folder_lock(self.out_dir, self._still_claimed, name=lock) as lock_fd:
            if lock_fd is None:
                return LOST
            return self._run(lock_fd, teacher_cache)

    def _still_claimed(self) -> bool:
        """While waiting for the folder: renew the lease every heartbeat; False once
        it is lost."""
        now = time.monotonic()
        if now - self.waited_flush < self.settings.heartbeat_s:
            return True
        self.waited_flush = now
        return self._flush() != LOST

    def _run(self, lock_fd: int, teacher_cache: Path | None) -> str:
        node = f"-node{self.seat.node_rank}" if self.seat else ""
        log_path = self.out_dir / f"attempt{self.attempt}{node}.log"
        with (
            open(log_path, "ab") as log_file,
            credentials.key_file(self.settings, self.secret) as key_file,
        ):
            threads = threads_per_job(self.settings)
            payload = {
                "spec": with_key_file(self.spec, key_file),
                "out_dir": str(self.out_dir),
                "resume_from": self.resume_from,
                "threads": threads,
                "teacher_cache": str(teacher_cache) if teacher_cache else None,
            }
            child = self._launch(payload, log_file, lock_fd)
            reader = threading.Thread(target=self._read, args=(child.stdout,), daemon=True)
            reader.start()
            lease_ok = self._supervise(child, reader)
        if not lease_ok:
            return LOST
        return self._finish(child.exit_code())

    def _launch(self, payload: dict[str, Any], log_file: Any, lock_fd: int) -> Child:
        if self.seat is None:
            return launch(self.settings.training_launch, payload, log_file, lock_fd)
        threads = max(1, payload["threads"] // self.seat.gpus)  # the host's cores, split
        payload = {
            **payload,
            "threads": threads,
            "collective_timeout_s": self.settings.collective_timeout_s,
        }
        payload_file = gang.write_payload(self.out_dir, self.seat, payload)
        argv = gang.agent_command(self.settings, self.seat, self.job_id, payload_file)
        return launch_agent(argv, gang.agent_env(self.settings, threads), log_file, lock_fd)

    def _read(self, stream: Any) -> None:
        for line in stream:
            try:
                self.messages.put(json.loads(line))
            except json.JSONDecodeError:
                continue
        self.messages.put(None)

    def _supervise(self, proc: Child, reader: threading.Thread) -> bool:
        """Until the training process has exited and its output is read: take its
        messages, flush at every heartbeat (or at once after an epoch or checkpoint),
        and stop it on cancel, on max_runtime_s, or for good after the grace period.
        Returns False if this worker lost its lease (the process is killed)."""
        last_flush, started = 0.0, time.monotonic()
        reader_done = False
        while True:
            try:
                msg = self.messages.get(timeout=0.2)
            except queue.Empty:
                msg = {}  # nothing new this turn
            if msg is None:  # the reader's end-of-output marker
                reader_done = True
            force = self._take(msg) if msg else False
            now = time.monotonic()
            if force or now - last_flush >= self.settings.heartbeat_s:
                status, last_flush = self._flush(), now
                if status == LOST:
                    self._kill(proc)
                    return False
                if status == S.CANCELLING:
                    self._stop(proc, now)
            if self._over_time(proc, now - started):
                self.timed_out = True  # stopped like a cancel, then failed
                self._stop(proc, now)
            running = proc.poll() is None
            if (
                running
                and self.cancel_sent_at is not None
                and now - self.cancel_sent_at > self.grace_s
            ):
                self._kill(proc)
            if running and self._agent_outlives_its_error(now):
                self._kill(proc)
            if reader_done and not running:
                return True

    def _agent_outlives_its_error(self, now: float) -> bool:
        """A multi-host member whose rank reported an error, with its agent still there
        after the grace period: the agent may be waiting on a rendezvous store that sat
        on the lost host. The error is what counts; the agent goes."""
        if self.seat is None or self.final is None or self.final["type"] != "error":
            return False
        return now - self.final_at > self.grace_s

    def _over_time(self, proc: Child, elapsed: float) -> bool:
        """max_runtime_s has just been passed by a run nobody asked to stop yet."""
        if not self.max_runtime_s or self.timed_out or self.cancel_sent_at is not None:
            return False
        return elapsed > self.max_runtime_s and proc.poll() is None

    def _take(self, msg: dict[str, Any]) -> bool:
        """Keep one message of the training process; True if it should be flushed now."""
        kind, now = msg.pop("type", ""), time.monotonic()
        if kind == "progress":
            new_phase = msg.get("phase") != (self.progress or {}).get("phase")
            self._keep_progress(msg)
            if new_phase or now - self.last_progress_event >= PROGRESS_EVERY_S:  # throttled
                self.pending.append(("progress", msg))  # a new phase (generating...) at once
                self.last_progress_event = now
            return False
        if kind == "epoch":
            self._keep_progress(msg)
            self.pending.append(("epoch", msg))
            return True
        if kind == "checkpoint":
            self.checkpoints.append(msg)
            return True
        if kind == "trial":  # a sweep's trial recorded: an event of its own
            self.pending.append(("trial", msg))
            return True
        if kind == "host":  # a multi-host job: one host's throughput at an epoch's end
            self.pending.append(("host", msg))
            return True
        self.final = {"type": kind, **msg}  # done, cancelled or error: the last word
        self.final_at = now
        return False

    def _keep_progress(self, msg: dict[str, Any]) -> None:
        """The newest progress, each model's validation figures kept apart: the job's
        `metrics` stay the student's while the baseline (the same student trained
        without a teacher) trains; the baseline's are its `baseline_metrics`."""
        metrics = msg.get("metrics") or {}
        if metrics and msg.get("phase") == "baseline":
            self.baseline_metrics = metrics
        elif metrics:
            self.student_metrics = metrics
        self.progress = {
            **msg,
            "metrics": self.student_metrics,
            "baseline_metrics": self.baseline_metrics,
        }

    def _stop(self, proc: Child, now: float) -> None:
        """Ask the training process to stop (SIGTERM, once); the loop stops between
        steps, and `_supervise` kills it after the grace period."""
        if self.cancel_sent_at is None and proc.poll() is None:
            self.cancel_sent_at = now
            proc.stop()

    def _kill(self, proc: Child) -> None:
        self.killed = True
        proc.kill()

    def _flush(self) -> str | None:
        """Heartbeat + progress + events + checkpoints in one transaction. On a database
        error nothing is lost: the batch stays pending and is retried next time."""
        progress = None if self.progress is None else protocol.stored_progress(self.progress)
        stored = self._store_checkpoints()
        try:
            with session_scope(self.settings.db_url) as session:
                status = self._heartbeat(session, progress)
                if status is None:
                    return LOST
                for ck, location, size in stored:
                    session.add(
                        Checkpoint(
                            id=new_id("ckpt"),
                            job_id=self.job_id,
                            attempt=self.attempt,
                            epoch=ck["epoch"],
                            step=ck["step"],
                            path=location,
                            bytes=size,
                        )
                    )
                doomed = self._prune(session) if stored else []
        except SQLAlchemyError as exc:
            log.warning("job %s: database write failed, will retry: %s", self.job_id, exc)
            return None
        self._delete_checkpoints(doomed)
        if self.pending:
            nudge(self.settings.broker_url, self.job_id)
        self.pending, self.checkpoints = [], []
        return status

    def _heartbeat(self, session: Session, progress: dict[str, Any] | None) -> str | None:
        """Renew this worker's hold (the job's lease; a multi-host member's slot and the
        job's), with progress and events; None when it is lost."""
        lease = self.settings.lease_s
        if self.seat is not None:
            member = self.seat.member
            return slots.heartbeat(session, member, self.job_id, lease, progress, self.pending)
        return repo.heartbeat(
            session, self.job_id, self.worker, self.attempt, lease, progress, self.pending
        )

    def _prune(self, session: Session) -> list[str]:
        """Retention (KD_KEEP_CHECKPOINTS): the rows of all but the newest checkpoints go
        in the transaction that records the new one; their files once it commits."""
        protect = {self.resume_step} if self.resume_step is not None else set()
        return prune_checkpoints(session, self.job_id, self.settings.keep_checkpoints, protect)

    def _delete_checkpoints(self, locations: list[str]) -> None:
        """Delete the pruned checkpoints' files (and, with remote storage, this worker's
        local copy); one left behind by a crash here goes with the job's folder."""
        for location in locations:
            try:
                storage.delete(self.settings, location)
                local = location.split(f"jobs/{self.job_id}/", 1)[-1]  # its path in out_dir
                (self.out_dir / local).unlink(missing_ok=True)
            except Exception as exc:  # noqa: BLE001 (S3 unreachable...): only space is lost
                log.warning(
                    "job %s: pruned checkpoint %s not deleted: %s", self.job_id, location, exc
                )

    def _checkpoint_key(self, path: Path) -> str:
        """jobs/<id>/<path under the job's folder>: a sweep's trials each keep
        trials/NNN/checkpoints/epochN.pt, which must not overwrite one another."""
        rel = path.relative_to(self.out_dir) if path.is_relative_to(self.out_dir) else None
        return f"jobs/{self.job_id}/{(rel or Path('checkpoints') / path.name).as_posix()}"

    def _store_checkpoints(self) -> list[tuple[dict[str, Any], str, int]]:
        """Put new checkpoints in the artifact store (a no-op for local storage) before
        they are recorded; one that cannot be stored is skipped (resume falls back to
        the previous one) rather than holding up the heartbeat."""
        stored = []
        for ck in self.checkpoints:
            if ck.get("phase") != "train":
                continue  # baseline checkpoints cannot resume the job
            path = Path(ck["path"])
            try:
                key = self._checkpoint_key(path)
                stored.append((ck, storage.put(self.settings, path, key), path.stat().st_size))
            except Exception as exc:  # noqa: BLE001 (S3 unreachable, disk error...)
                log.warning("job %s: checkpoint %s not stored: %s", self.job_id, path.name, exc)
        self.checkpoints = []
        return stored

    def _flush_until_done(self) -> None:
        for delay in (0, 0.5, 1, 2, 4, 8):
            time.sleep(delay)
            if self._flush() is not None:
                return

    def _finish(self, returncode: int) -> str:
        if self.seat is not None and self.final is None and returncode == 0:
            self._flush_until_done()
            return MEMBER_DONE  # the job's end is global rank 0's, on its host
        if self.seat is not None and (self.final or {}).get("type") != "done":
            self._name_lost_nodes()
        self._flush_until_done()
        final = self.final or {
            "type": "error",
            "kind": "crash",
            "message": _exit_reason(returncode, self.seat),
        }
        if final["type"] == "done":
            try:  # outside any transaction: an upload to S3 may take a while
                final["outputs"] = self._store_outputs(final["report"])
            except Exception as exc:  # noqa: BLE001 (storage unreachable): retried
                final = {"type": "error", "kind": "crash", "message": f"storing outputs: {exc}"}
        if final["type"] == "done" and tracking.wanted(self.settings, self.spec):
            self._track(final["report"])
        for delay in (0, 1, 2, 4, 8, 16):
            time.sleep(delay)
            try:
                with session_scope(self.settings.db_url) as session:
                    status, after = self._record_end(session, final)  # + the webhook row
                break
            except SQLAlchemyError as exc:
                log.warning("job %s: cannot record the end yet: %s", self.job_id, exc)
        else:
            return UNRECORDED  # the lease expires and the reaper takes over
        if after is not None:
            after.run(self.settings)
        return str(status)

    def _name_lost_nodes(self) -> None:
        """A multi-host attempt that failed here: wait (a lease at most, renewing ours)
        until every other host's slot is released or expired, and name each host whose
        slot expired (its worker died, or it was cut off) in a `node_lost` event."""
        assert self.seat is not None
        deadline = time.monotonic() + self.settings.lease_s + self.settings.heartbeat_s
        while True:
            with session_scope(self.settings.db_url) as session:
                others = [
                    (m.host, m.node_rank, m.lease_expires_at)
                    for m in slots.members(session, self.job_id, self.attempt)
                    if m.id != self.seat.member.slot_id
                ]
            now = utcnow()
            if all(expires < now for _, _, expires in others) or time.monotonic() > deadline:
                break
            self._flush()
            time.sleep(self.settings.heartbeat_s / 2)
        for host, node_rank, expires in others:
            if expires < now:
                lost = {"attempt": self.attempt, "host": host, "node_rank": node_rank}
                self.pending.append(("node_lost", lost))

    def _track(self, report: dict[str, Any]) -> None:
        """Log the job to MLflow (worker.tracking) while the lease is kept alive; the
        outcome becomes the job's `tracking` event, before its final status."""
        result: dict[str, Any] = {}
        thread = threading.Thread(
            target=lambda: result.update(
                tracking.log_job(
                    self.settings, self.job_id, self.tenant_id, self.spec, report, self.out_dir
                )
            ),
            daemon=True,
        )
        thread.start()
        while thread.is_alive():
            thread.join(self.settings.heartbeat_s)
            self._flush()  # a heartbeat: the upload may outlast a lease
        if result.get("mlflow") == "failed":
            log.warning("job %s: MLflow logging failed: %s", self.job_id, result.get("error"))
        self.pending.append(("tracking", result))
        self._flush_until_done()

    def _decide_end(
        self, job: Job, final: dict[str, Any]
    ) -> tuple[tuple[JobStatus, ...], JobStatus, str, dict[str, Any]]:
        """From the training process's last message: (expected statuses, new status,
        reason, columns to set)."""
        kind = final["type"]
        if kind == "done":
            if job.status == S.CANCELLING:
                return (S.CANCELLING,), S.CANCELLED, "cancel requested while finishing", {}
            return (S.RUNNING,), S.SUCCEEDED, "training finished", {"report": final["report"]}
        if self.timed_out and job.status == S.RUNNING:
            why = f"exceeded max_runtime_s ({self.max_runtime_s} s)"
            return (S.RUNNING,), S.FAILED, why, {"error": why}
        if kind == "cancelled" or (self.killed and job.status == S.CANCELLING):
            return (S.CANCELLING, S.RUNNING), S.CANCELLED, "stopped on request", {}
        message = final.get("message", "unknown error")
        if final.get("kind") == "invalid":
            return (S.RUNNING, S.CANCELLING), S.FAILED, message, {"error": message}
        if job.attempt >= job.max_attempts:
            why = f"{message} (attempt {job.attempt}/{job.max_attempts})"
            return (S.RUNNING, S.CANCELLING), S.FAILED, why, {"error": message}
        retry = {"lease_expires_at": None, "published_at": None}
        return (S.RUNNING,), S.QUEUED, f"{message}; retrying", retry

    def _record_end(
        self, session: Session, final: dict[str, Any]
    ) -> tuple[JobStatus, AfterCommit | None]:
        job = session.get(Job, self.job_id)
        assert job is not None
        expect, to, reason, values = self._decide_end(job, final)
        if to == S.SUCCEEDED:
            self._record_artifacts(session, job, final["outputs"])
        # a multi-host job is held by its members' slots: the attempt is the condition
        held = {} if self.seat is not None else {"worker_id": self.worker}
        after = lifecycle.transition(
            session, self.job_id, expect, to, reason, attempt=self.attempt, **held, **values
        )
        return to, after

    def _store_outputs(self, report: dict[str, Any]) -> list[tuple[str, int, str, str]]:
        """Put each output file (digests from the report the child sent) and report.json
        (hashed here) in the artifact store: (name, bytes, sha256, location)."""
        files = [(info["name"], info["bytes"], info["sha256"]) for info in report["files"].values()]
        blob = (self.out_dir / "report.json").read_bytes()
        files.append(("report.json", len(blob), hashlib.sha256(blob).hexdigest()))
        key = f"jobs/{self.job_id}"
        return [
            (name, size, sha, storage.put(self.settings, self.out_dir / name, f"{key}/{name}"))
            for name, size, sha in files
        ]

    def _record_artifacts(
        self, session: Any, job: Job, outputs: list[tuple[str, int, str, str]]
    ) -> None:
        for name, size, sha, location in outputs:
            session.add(
                Artifact(
                    id=new_id("art"),
                    job_id=job.id,
                    tenant_id=job.tenant_id,
                    name=name,
                    path=location,
                    bytes=size,
                    sha256=sha,
                    content_type=CONTENT_TYPES.get(Path(name).suffix, "application/octet-stream"),
                )
            )


def _exit_reason(returncode: int, seat: gang.Seat | None = None) -> str:
    where = ""
    if seat is not None:
        where = f" on node {seat.node_rank} ({seat.member.host})"
    if returncode < 0:
        return f"the training process{where} was killed by signal {-returncode}"
    return f"the training process{where} exited with code {returncode} without a result"
