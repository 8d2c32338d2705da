"""Job service: validate, create (idempotently), read, cancel, retry, delete."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import storage
from app.broker import route_for
from app.db import repository as repo
from app.db.models import (
    TERMINAL,
    Artifact,
    Checkpoint,
    IdempotencyKey,
    Job,
    JobEvent,
    JobStatus,
    JobTransition,
    Tenant,
    new_id,
)
from app.errors import Conflict, Invalid, NotFound
from app.services import dataset_refs, lifecycle, quotas
from app.services.egress import AllowList, EgressRefused, resolve
from app.services.files import describe_reference, resolve_reference
from app.services.lifecycle import AfterCommit
from app.settings import Settings
from kdcore.spec import model_entries


def validate_spec(
    session: Session, settings: Settings, tenant_id: str, data: Any
) -> tuple[Any, list[tuple[str, str]], list[str]]:
    """Returns (JobSpec or None, errors as (pointer, message), warnings). The cheap
    checks come first; the spec is sized, and its weights compared, only if they pass."""
    from kdcore.checks.validate import parse_spec
    from kdcore.errors import SpecError

    try:
        spec = parse_spec(data)
    except SpecError as exc:
        return None, exc.errors, []
    spec = _memory_budget(settings, spec)
    errors = _file_errors(session, settings, tenant_id, spec) + _service_errors(settings, spec)
    warnings = _warnings(spec)
    if not errors:
        found, sizing = check_cost(session, settings, tenant_id, spec)
        errors += found
        if sizing.checked < sizing.distinct:
            warnings.append(
                f"{sizing.checked} of the sweep's {sizing.distinct} distinct trial sizes were "
                "checked at submission; the worker checks every one before the job starts"
            )
    if not errors:  # the teacher's channels first: said in words, not in tensor shapes
        error, notes = _teacher_inputs(session, settings, tenant_id, spec)
        errors += [("/dataset", error)] if error else []
        warnings += notes
    if not errors:
        errors += _check_weights_fit(session, settings, tenant_id, spec)
    return spec, errors, warnings


def _teacher_inputs(
    session: Session, settings: Settings, tenant_id: str, spec: Any
) -> tuple[str | None, list[str]]:
    """What the teacher's recorded preprocessing (a train job's student.json beside its
    weights, an ONNX graph's metadata) says of this job's inputs (kdcore.image.preflight)."""
    from kdcore.image.data import describe
    from kdcore.image.preflight import teacher_input_notes

    local = _with_local_teacher(session, settings, tenant_id, spec)
    if local is None:
        return None, []
    shape = describe(spec.dataset)
    return teacher_input_notes(local, shape[0][0] if shape else None)


def _with_local_teacher(session: Session, settings: Settings, tenant_id: str, spec: Any) -> Any:
    """The spec with its one teacher's checkpoint reference made a local path, or None
    (no single teacher with weights, or a reference that does not resolve)."""
    if spec.kind != "distill" or spec.teacher is None or spec.teacher.checkpoint is None:
        return None
    path = resolve_reference(session, tenant_id, spec.teacher.checkpoint, "checkpoint")
    if path is None:
        return None
    teacher = spec.teacher.model_copy(
        update={"checkpoint": str(storage.local_copy(settings, path))}
    )
    return spec.model_copy(update={"teacher": teacher})


def teacher_score_warnings(
    session: Session, settings: Settings, tenant_id: str, spec: Any
) -> list[str]:
    """For `POST /v1/jobs/validate` (not on submission: it runs the teacher): the
    preflight's verdict where it is cheap to compute now (kdcore.image.run.preview_teacher)."""
    from kdcore.image.run import preview_teacher

    local = _with_local_teacher(session, settings, tenant_id, spec)
    said = preview_teacher(local) if local is not None else None
    return [f"scored now, {said}"] if said else []


def _file_errors(
    session: Session, settings: Settings, tenant_id: str, spec: Any
) -> list[tuple[str, str]]:
    """Every file the spec names exists, is the caller's, and was uploaded for that use."""
    from kdcore.image.data import needs_path

    errors = []
    for pointer, model in spec.model_roles():
        ref = model.checkpoint
        if ref is not None and resolve_reference(session, tenant_id, ref, "checkpoint") is None:
            errors.append(
                (f"{pointer}/checkpoint", describe_reference(session, tenant_id, ref, "checkpoint"))
            )
    ds = spec.dataset
    if ds.tokenizer is not None:  # a path on the worker: the library's and the CLI's only
        errors.append(
            (
                "/dataset/tokenizer",
                "the service reads the tokenizer from the teacher's (or the student's) "
                "uploaded model folder (tokenizer.json in it)",
            )
        )
    if ds.name != "text" and (ds.path or "").startswith("art_"):
        errors.append(
            (
                "/dataset/path",
                "a job's artifact serves as a dataset only for text sets (a teacher's "
                "generations.jsonl, dataset.name: text); upload an image set "
                "(kd files upload PATH --purpose dataset)",
            )
        )
    elif ds.name == "text" and dataset_refs.is_reference(ds.path):
        errors.append(("/dataset/path", "a text set is an uploaded .txt or .jsonl file"))
    elif ds.path is not None and not needs_path(ds.name):
        errors.append(("/dataset/path", "built-in datasets take no path"))
    elif dataset_refs.is_reference(ds.path):  # s3:// or local://: checked where it lives
        found = dataset_refs.problem(settings, tenant_name(session, tenant_id), ds.path)
        if found:
            errors.append(("/dataset/path", found))
    elif ds.path is not None and resolve_reference(session, tenant_id, ds.path, "dataset") is None:
        errors.append(("/dataset/path", describe_reference(session, tenant_id, ds.path, "dataset")))
    return errors


def _memory_budget(settings: Settings, spec: Any) -> Any:
    """A set's in-memory budget (dataset.memory_budget_mb, past which it streams) is at
    most the service's limit on a dataset in memory: the default is lowered to it."""
    limit = settings.max_dataset_bytes // 1024**2
    ds = spec.dataset
    if "memory_budget_mb" in ds.model_fields_set or ds.memory_budget_mb <= limit:
        return spec
    dataset = ds.model_copy(update={"memory_budget_mb": max(1, limit)})
    return spec.model_copy(update={"dataset": dataset})


def _service_errors(settings: Settings, spec: Any) -> list[tuple[str, str]]:
    """The webhook URL passes the egress policy; some executor runs the job's queue; a
    dataset's memory budget is within the service's limit."""
    errors = []
    if spec.dataset.memory_budget_mb * 1024**2 > settings.max_dataset_bytes:
        limit = settings.max_dataset_bytes // 1024**2
        errors.append(
            (
                "/dataset/memory_budget_mb",
                f"over this service's limit of {limit} MiB for a dataset in memory; a larger "
                "set streams (dataset.streaming)",
            )
        )
    if spec.webhook_url is not None:
        try:
            resolve(spec.webhook_url, AllowList.parse(settings.webhook_allow))
        except EgressRefused as exc:
            errors.append(("/webhook_url", str(exc)))
    pools = settings.served_pools()
    queue, _ = route_for(spec.model_dump(mode="json"))
    if pools is not None and queue not in pools:
        errors.append(
            (
                "/resources",
                f"no executor of this service runs queue {queue!r} (resources.gpu_type and "
                f"resources.gpus pick it); it runs {sorted(pools)}",
            )
        )
    return errors


def _warnings(spec: Any) -> list[str]:
    warnings = []
    if (
        spec.kind == "distill"
        and spec.augment.enabled
        and spec.distillation.cache_teacher == "auto"
    ):
        warnings.append("augment is on, so teacher outputs are computed every step (no cache)")
    for pointer, model in spec.teacher_models():
        if model.checkpoint is None:
            warnings.append(f"{pointer} has no checkpoint: it will be randomly initialised")
    return warnings


def cost_limits(settings: Settings) -> Any:
    from kdcore.checks.cost import Limits

    return Limits(
        max_model_params=settings.max_model_params,
        max_activation_bytes=settings.max_activation_bytes,
        max_dataset_bytes=settings.max_dataset_bytes,
        max_archive_bytes=settings.max_archive_unpacked_bytes,
        max_sweep_trial_epochs=settings.max_sweep_trial_epochs,
    )


def check_cost(
    session: Session, settings: Settings, tenant_id: str, spec: Any
) -> tuple[list[tuple[str, str]], Any]:
    """The job's size (models on the meta device, the dataset from its metadata) against
    the configured limits, and how much of a sweep was sized (KD_SWEEP_SIZING_S bounds
    the time one submission spends). Nothing is allocated or decoded."""
    from dataclasses import replace

    from kdcore.checks.cost import SweepSizing, as_built, check_with_sweep

    if dataset_refs.is_reference(spec.dataset.path):
        if str(spec.dataset.path).startswith("s3://"):  # sized by the worker, once fetched
            spec = spec.model_copy(
                update={"dataset": spec.dataset.model_copy(update={"path": None})}
            )
        else:
            folder = dataset_refs.local_path(
                settings, tenant_name(session, tenant_id), spec.dataset.path
            )
            spec = spec.model_copy(
                update={"dataset": spec.dataset.model_copy(update={"path": str(folder)})}
            )
    elif spec.dataset.path is not None:
        path = resolve_reference(session, tenant_id, spec.dataset.path, "dataset")
        if path is None:  # reported already
            return [], SweepSizing()
        local = str(storage.local_copy(settings, path))
        spec = spec.model_copy(update={"dataset": spec.dataset.model_copy(update={"path": local})})
    folders, errors = _model_folders(session, settings, tenant_id, spec)
    if errors:
        return errors, SweepSizing()
    limits = replace(cost_limits(settings), sweep_sizing_s=settings.sweep_sizing_s)
    return check_with_sweep(as_built(spec, folders), limits)


def _model_folders(
    session: Session, settings: Settings, tenant_id: str, spec: Any
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """{pointer: FolderSizing} of each model whose checkpoint is an uploaded model folder
    (its config.json, its tokenizer's vocabulary), read as the worker reads them, so a
    folder is sized by the model it will build; errors for folders that cannot be read."""
    from kdcore.checks.cost import FolderSizing
    from kdcore.errors import KDError
    from kdcore.models.ecosystems import HF, is_model_folder
    from kdcore.text.models import read_folder_sizing

    folders, errors = {}, []
    for pointer, model in spec.model_roles():
        if model.checkpoint is None or model.arch is None:
            continue
        path = resolve_reference(session, tenant_id, model.checkpoint, "checkpoint")
        if path is None:  # reported already
            continue
        local = storage.local_copy(settings, path)
        if not is_model_folder(local):
            if model.arch.startswith(HF) and model.config is None:
                errors.append(
                    (f"{pointer}/checkpoint", _bare_weights(model.arch, model.checkpoint))
                )
            continue
        try:
            config, vocab = read_folder_sizing(local)
        except KDError as exc:
            errors.append((f"{pointer}/checkpoint", str(exc)))
            continue
        folders[pointer] = FolderSizing(config, vocab)
    return folders, errors


def _bare_weights(arch: str, ref: str) -> str:
    return (
        f"{arch} with no config needs a model folder (a zip of config.json + "
        f"model.safetensors [+ tokenizer.json], such as a job's student_hf.zip artifact); "
        f"{ref} holds weights only: give the folder, or the model's `config` beside them"
    )


def _check_weights_fit(
    session: Session, settings: Settings, tenant_id: str, spec: Any
) -> list[tuple[str, str]]:
    """Compare each checkpoint's tensor shapes with its model, built on the meta device
    (no memory), for built-in datasets, whose shapes we know."""
    from kdcore.errors import KDError
    from kdcore.image.data import describe

    shape = describe(spec.dataset)
    if shape is None:
        return []
    input_shape, classes, _ = shape
    errors = []
    for pointer, model in spec.model_roles():
        if model.checkpoint is None:
            continue
        path = resolve_reference(session, tenant_id, model.checkpoint, "checkpoint")
        if path is None:  # validate_spec reported it already
            continue
        outputs = model.num_classes or classes
        try:
            local = storage.local_copy(settings, path)
            if model.arch is None:  # an ONNX teacher: its graph against the data
                problem = _graph_problem(settings, local, input_shape, outputs)
            else:
                problem = _weights_problem(settings, model, local, input_shape, outputs)
        except (KDError, ValueError, RuntimeError) as exc:
            problem = str(exc)
        if problem:
            errors.append((f"{pointer}/checkpoint", problem))
    return errors


def _weights_problem(
    settings: Settings, model: Any, local: Any, input_shape: Any, outputs: int
) -> str | None:
    """Do the weights (or an hf model folder's) fit the model, built on the meta device?"""

    import torch

    from kdcore.image.features import classifier_name
    from kdcore.io.checkpoints import check_fit, fit_shapes
    from kdcore.models import build_model
    from kdcore.models.ecosystems import HF, is_model_folder, read_hf_folder_shapes

    config, shapes = model.config, None
    if model.arch.startswith(HF) and is_model_folder(local):
        # checked in full at upload: here only its config and its weights' header
        folder_config, shapes = read_hf_folder_shapes(local)
        config = model.config or folder_config
    with torch.device("meta"):
        net = build_model(model.arch, outputs, input_shape, config)
    params = sum(p.numel() for p in net.parameters())
    if params > settings.max_model_params:
        limit = settings.max_model_params
        return f"{model.arch} has {params:,} parameters, over the limit of {limit:,}"
    reset = classifier_name(net) if model.reset_head else None
    if shapes is None:
        check_fit(net, local, reset)
    else:
        fit_shapes(net, shapes, local.name, reset)
    return None


def _graph_problem(settings: Settings, path: Any, input_shape: Any, outputs: int) -> str | None:
    """Why an ONNX teacher cannot serve this job (not a graph, wrong shapes, too big)."""
    from kdcore.models.onnx import fit_problem, read_onnx

    sig = read_onnx(path)
    if sig is None:
        return "a teacher without arch must be an ONNX graph"
    if sig.parameters > settings.max_model_params:
        return (
            f"the ONNX teacher has {sig.parameters:,} weights, over the limit of "
            f"{settings.max_model_params:,}"
        )
    return fit_problem(sig, tuple(input_shape), outputs)


def _insert_job(
    session: Session, settings: Settings, tenant_id: str, spec: dict[str, Any], **extra: Any
) -> Job:
    queue, priority = route_for(spec)
    job = Job(
        id=new_id("job"),
        tenant_id=tenant_id,
        name=spec["name"],
        kind=spec["kind"],
        status=JobStatus.QUEUED,
        spec=spec,
        max_attempts=settings.max_attempts,
        webhook_url=spec.get("webhook_url"),
        queue=queue,
        priority=priority,
        progress={},
        **extra,
    )
    session.add(job)
    session.flush()
    lifecycle.created(session, job)
    return job


def _request_hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Submission:
    """What create_job did: a new `job`, or the stored first response (`replay`) of an
    idempotent request seen before."""

    job: Job | None
    replay: dict[str, Any] | None
    request_hash: str


def create_job(
    session: Session, settings: Settings, tenant_id: str, data: Any, idempotency_key: str | None
) -> Submission:
    """Insert a queued job (validated, within the tenant's quotas). With an idempotency
    key seen before, nothing is inserted: the first response is replayed; the same key
    with another body is Invalid. The caller renders the job and, with a key, stores
    that response with `remember_response` in the same transaction."""
    digest = _request_hash(data)
    if idempotency_key:
        replay = _replay(session, tenant_id, idempotency_key, digest)
        if replay is not None:
            return Submission(None, replay, digest)
    spec, errors, _ = validate_spec(session, settings, tenant_id, data)
    if errors:
        raise Invalid(errors)
    quotas.check_submission(session, settings, tenant_id, spec.priority)
    job = _insert_job(session, settings, tenant_id, spec.model_dump(mode="json"))
    return Submission(job, None, digest)


def remember_response(
    session: Session, tenant_id: str, key: str, submission: Submission, body: dict[str, Any]
) -> dict[str, Any] | None:
    """Store a created job's response under its idempotency key. If a concurrent request
    with the same key got there first, this one is rolled back and the winner's response
    returned (answer that instead)."""
    assert submission.job is not None
    session.add(
        IdempotencyKey(
            tenant_id=tenant_id,
            key=key,
            request_hash=submission.request_hash,
            job_id=submission.job.id,
            response=body,
        )
    )
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        replay = _replay(session, tenant_id, key, submission.request_hash)
        if replay is None:
            raise
        return replay
    return None


def _replay(session: Session, tenant_id: str, key: str, digest: str) -> dict[str, Any] | None:
    row = session.get(IdempotencyKey, (tenant_id, key))
    if row is None:
        return None
    if row.request_hash != digest:
        raise Invalid(
            [("/headers/Idempotency-Key", "reused with another body")],
            "this Idempotency-Key was used with a different request body",
        )
    return dict(row.response)


def get_job(session: Session, tenant_id: str, job_id: str) -> Job:
    job = repo.get_owned(session, Job, tenant_id, job_id)
    if job is None:
        raise NotFound("job", job_id)
    return job


@dataclass(frozen=True)
class JobQuery:
    """A page of the job list: at most `limit` jobs after the job `after` (newest
    first), of one `status` and with `name` in their name, when given."""

    limit: int = 50
    after: str | None = None
    status: str | None = None
    name: str | None = None


def list_job_versions(
    conn: Connection, tenant_id: str, query: JobQuery
) -> tuple[list[tuple[str, int]], bool]:
    """The page as (id, version) only, in Core on a plain connection (no ORM session, no
    row objects): what decides whether a cached rendering of each job is still right,
    without loading specs and reports."""
    stmt = select(Job.id, Job.version).where(Job.tenant_id == tenant_id)
    cursor = select(Job.created_at).where(Job.id == query.after, Job.tenant_id == tenant_id)
    if query.after:  # the cursor job's time in the same query: one round trip a page
        at = cursor.scalar_subquery()
        stmt = stmt.where((Job.created_at < at) | ((Job.created_at == at) & (Job.id < query.after)))
    if query.status:
        stmt = stmt.where(Job.status == query.status)
    if query.name:
        # the name is matched literally: % and _ are not wildcards here
        literal = query.name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        stmt = stmt.where(Job.name.ilike(f"%{literal}%", escape="\\"))
    stmt = stmt.order_by(Job.created_at.desc(), Job.id.desc()).limit(query.limit + 1)
    rows = [(str(i), int(v)) for i, v in conn.execute(stmt)]
    if not rows and query.after and conn.execute(cursor).first() is None:
        raise NotFound("job", query.after)  # an unknown cursor, not an empty page
    return rows[: query.limit], len(rows) > query.limit


def jobs_by_id(session: Session, tenant_id: str, job_ids: list[str]) -> list[Job]:
    """The tenant's jobs of `job_ids`, in that order (missing ones left out)."""
    if not job_ids:
        return []
    found = {
        job.id: job
        for job in session.scalars(
            select(Job).where(Job.tenant_id == tenant_id, Job.id.in_(job_ids))
        )
    }
    return [found[i] for i in job_ids if i in found]


def job_version(session: Session, tenant_id: str, job_id: str) -> int | None:
    """The version of the tenant's job, None if there is no such job: one indexed row."""
    version = session.scalar(
        select(Job.version).where(Job.id == job_id, Job.tenant_id == tenant_id)
    )
    return None if version is None else int(version)


def transitions_of(session: Session, job_ids: list[str]) -> dict[str, list[JobTransition]]:
    """The transitions of several jobs in one query, each job's in order."""
    stmt = (
        select(JobTransition)
        .where(JobTransition.job_id.in_(job_ids))
        .order_by(JobTransition.job_id, JobTransition.id)
    )
    out: dict[str, list[JobTransition]] = {}
    for t in session.scalars(stmt):
        out.setdefault(t.job_id, []).append(t)
    return out


@dataclass(frozen=True)
class JobView:
    """A job as the API shows it: the row, its transitions, its place in the queue."""

    job: Job
    transitions: list[JobTransition]
    queue_position: int | None


def job_views(session: Session, jobs: list[Job]) -> list[JobView]:
    """Views of several jobs in three queries (rows given, transitions, positions), not
    two per job."""
    if not jobs:
        return []
    history = transitions_of(session, [j.id for j in jobs])
    positions = repo.queue_positions(session, jobs)
    return [JobView(j, history.get(j.id, []), positions.get(j.id)) for j in jobs]


def job_view(session: Session, job: Job) -> JobView:
    return job_views(session, [job])[0]


def queue_position(session: Session, job: Job) -> int | None:
    """The job's 1-based place in its queue while it is queued (one indexed count)."""
    return repo.queue_positions(session, [job]).get(job.id)


def cancel_job(session: Session, tenant_id: str, job_id: str) -> tuple[Job, AfterCommit | None]:
    """Cancel (see lifecycle.cancel). Returns the job and what to run after commit."""
    job = get_job(session, tenant_id, job_id)
    if job.status in TERMINAL:
        raise Conflict(f"job {job_id} already ended ({job.status})")
    after = lifecycle.cancel(session, job)
    session.refresh(job)  # changed here, or under us: report the current state
    if after is None and job.status in TERMINAL:
        raise Conflict(f"job {job_id} already ended ({job.status})")
    return job, after


def retry_job(
    session: Session,
    settings: Settings,
    tenant_id: str,
    job_id: str,
    from_checkpoint: bool,
) -> Job:
    """A new job with the same spec (resumed from the old one's last checkpoint if
    asked), counted against the quotas like any submission."""
    old = get_job(session, tenant_id, job_id)
    if old.status not in TERMINAL:
        raise Conflict(f"job {job_id} has not ended; cancel it first")
    checkpoint_id = None
    if from_checkpoint:
        latest = latest_checkpoint(session, job_id)
        if latest is None:
            raise Conflict(f"job {job_id} has no checkpoint to resume from")
        checkpoint_id = latest.id
    quotas.check_submission(session, settings, tenant_id, int(old.spec.get("priority") or 0))
    return _insert_job(
        session, settings, tenant_id, old.spec, retry_of=old.id, resume_checkpoint_id=checkpoint_id
    )


def delete_job(session: Session, settings: Settings, tenant_id: str, job_id: str) -> None:
    job = get_job(session, tenant_id, job_id)
    if job.status not in TERMINAL:
        raise Conflict(f"job {job_id} is {job.status}; cancel it first")
    session.delete(job)
    storage.delete_prefix(settings, f"jobs/{job_id}")


def latest_checkpoint(session: Session, job_id: str) -> Checkpoint | None:
    stmt = (
        select(Checkpoint)
        .where(Checkpoint.job_id == job_id)
        .order_by(Checkpoint.step.desc(), Checkpoint.created_at.desc())
        .limit(1)
    )
    return session.scalar(stmt)


def list_checkpoints(session: Session, job_id: str) -> list[Checkpoint]:
    stmt = select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step)
    return list(session.scalars(stmt))


def prune_checkpoints(
    session: Session, job_id: str, keep: int, protect_steps: set[int]
) -> list[str]:
    """Delete the rows of the job's checkpoints but the newest `keep`, those at
    `protect_steps` (the one this attempt resumed from) and those a retry resumes from;
    returns the locations no kept row shares, to delete once this commits."""
    rows = list_checkpoints(session, job_id)
    if len(rows) <= keep:
        return []
    referenced = set(
        session.scalars(
            select(Job.resume_checkpoint_id).where(
                Job.resume_checkpoint_id.in_([row.id for row in rows])
            )
        )
    )
    doomed = [
        row
        for row in rows[: len(rows) - keep]
        if row.step not in protect_steps and row.id not in referenced
    ]
    kept = {row.path for row in rows if row not in doomed}
    for row in doomed:
        session.delete(row)
    return sorted({row.path for row in doomed} - kept)


def list_artifacts(session: Session, job_id: str) -> list[Artifact]:
    stmt = select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.name)
    return list(session.scalars(stmt))


def list_tenant_artifacts(
    session: Session, tenant_id: str, name: str, limit: int
) -> list[tuple[Artifact, Job]]:
    """The tenant's artifacts called `name` (e.g. student.safetensors: the weights its
    jobs trained, which can teach a new job), newest first, with their jobs."""
    stmt = (
        select(Artifact, Job)
        .join(Job, Job.id == Artifact.job_id)
        .where(Artifact.tenant_id == tenant_id, Artifact.name == name)
        .order_by(Artifact.created_at.desc(), Artifact.id.desc())
        .limit(limit)
    )
    return [(art, job) for art, job in session.execute(stmt)]


def get_artifact(
    session: Session, settings: Settings, tenant_id: str, artifact_id: str
) -> Artifact:
    row = repo.get_owned(session, Artifact, tenant_id, artifact_id)
    if row is None or not storage.exists(settings, row.path):
        raise NotFound("artifact", artifact_id)
    return row


def events_after(session: Session, job_id: str, after: int, limit: int) -> list[JobEvent]:
    stmt = (
        select(JobEvent)
        .where(JobEvent.job_id == job_id, JobEvent.seq > after)
        .order_by(JobEvent.seq)
        .limit(limit)
    )
    return list(session.scalars(stmt))


def metric_series(session: Session, job_id: str) -> list[dict[str, Any]]:
    stmt = (
        select(JobEvent)
        .where(JobEvent.job_id == job_id, JobEvent.type.in_(("progress", "epoch")))
        .order_by(JobEvent.seq)
    )
    return [{"seq": e.seq, "type": e.type, **e.data} for e in session.scalars(stmt)]


def resolved_spec(session: Session, settings: Settings, job: Job) -> dict[str, Any]:
    """The spec kdcore runs: file and artifact ids replaced by paths on this host
    (objects in S3 are fetched into the local cache first). A dataset by reference
    (s3://, local://) is left for `fetch_dataset`, outside any transaction."""
    spec = json.loads(json.dumps(job.spec))
    for pointer, model in model_entries(spec):
        if model.get("checkpoint"):
            path = resolve_reference(session, job.tenant_id, model["checkpoint"], "checkpoint")
            if path is None:
                raise FileNotFoundError(f"{pointer} checkpoint {model['checkpoint']} was deleted")
            model["checkpoint"] = str(storage.local_copy(settings, path))
    ds = spec["dataset"]
    if ds.get("path") and not dataset_refs.is_reference(ds["path"]):  # fetched by the worker
        path = resolve_reference(session, job.tenant_id, ds["path"], "dataset")
        if path is None:
            raise FileNotFoundError(f"dataset {ds['path']} was deleted")
        ds["path"] = str(storage.local_copy(settings, path))
    return spec


def tenant_name(session: Session, tenant_id: str) -> str:
    tenant = session.get(Tenant, tenant_id)
    return tenant.name if tenant is not None else ""


def fetch_dataset(settings: Settings, tenant: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A dataset by reference made a path on this host (an S3 prefix copied into the
    dataset cache: may take a while, so called holding no transaction)."""
    ds = spec.get("dataset") or {}
    if dataset_refs.is_reference(ds.get("path")):
        try:
            ds["path"] = str(dataset_refs.local_path(settings, tenant, ds["path"]))
        except dataset_refs.DatasetRefError as exc:
            raise FileNotFoundError(str(exc)) from None
    return spec
