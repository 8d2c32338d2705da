"""Admission: may this tenant queue this job here? The library's checks
(kdcore.checks.admit: sizes, the teacher's inputs, weights against models) run once,
with the tenant's files resolved once each; the service adds its own (the webhook's
and a teacher endpoint's egress, the endpoint's stored credential, a queue some
executor runs, the in-memory dataset limit)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from app import storage
from app.broker import route_for
from app.services import credentials, dataset_refs
from app.services.egress import AllowList, EgressRefused, resolve
from app.services.files import describe_reference, resolve_reference
from app.services.job_inputs import ALLOW, tenant_name
from app.settings import Settings
from kdcore.checks.admit import Admission, Purpose, admit, teacher_score
from kdcore.checks.cost import Limits
from kdcore.checks.validate import parse_schema
from kdcore.errors import SpecError
from kdcore.spec import EndpointSpec, JobSpec

Problem = tuple[str, str]


def limits(settings: Settings) -> Limits:
    """This service's limits on a job's size (the worker checks them again)."""
    return Limits(
        max_model_params=settings.max_model_params,
        max_activation_bytes=settings.max_activation_bytes,
        max_dataset_bytes=settings.max_dataset_bytes,
        max_archive_bytes=settings.max_archive_unpacked_bytes,
        max_sweep_trial_epochs=settings.max_sweep_trial_epochs,
    )


def parse(data: Any) -> tuple[JobSpec | None, list[Problem]]:
    """A request body as a JobSpec (the schema: types, ranges, fields), or the
    problems, each at its JSON pointer; `check` does the rest."""
    try:
        return parse_schema(data), []
    except SpecError as exc:
        return None, exc.errors


class TenantFiles:
    """The resolver admission hands the library: a tenant's file and artifact ids, and
    datasets by reference (s3://, local://), made files on this host, each resolved once
    per request."""

    def __init__(self, session: Session, settings: Settings, tenant_id: str) -> None:
        self.session, self.settings, self.tenant_id = session, settings, tenant_id
        self.resolved: dict[tuple[str, str], Path | None] = {}

    def __call__(self, ref: str, purpose: Purpose) -> Path | None:
        key = (ref, purpose)
        if key not in self.resolved:
            self.resolved[key] = self._resolve(ref, purpose)
        return self.resolved[key]

    def _resolve(self, ref: str, purpose: Purpose) -> Path | None:
        if purpose == "tokenizer":  # a path on the worker: the library's and the CLI's only
            raise FileNotFoundError(
                "the service reads the tokenizer from the teacher's (or the student's) "
                "uploaded model folder (tokenizer.json in it)"
            )
        if purpose == "text" and dataset_refs.is_reference(ref):
            raise FileNotFoundError("a text set is an uploaded .txt or .jsonl file")
        if purpose == "dataset" and ref.startswith("art_"):
            raise FileNotFoundError(
                "a job's artifact serves as a dataset only for text sets (a teacher's "
                "generations.jsonl, dataset.name: text); upload an image set "
                "(kd files upload PATH --purpose dataset)"
            )
        if dataset_refs.is_reference(ref):  # checked where it lives
            return self._dataset_by_reference(ref)
        use = purpose if purpose in ("checkpoint", "teacher_outputs") else "dataset"
        path = resolve_reference(self.session, self.tenant_id, ref, use)
        if path is None:
            raise FileNotFoundError(describe_reference(self.session, self.tenant_id, ref, use))
        return storage.local_copy(self.settings, path)

    def _dataset_by_reference(self, ref: str) -> Path | None:
        """A local:// folder is read where it is; an s3:// set is listed (it exists and
        is the tenant's) and sized by the worker, once fetched (None)."""
        tenant = tenant_name(self.session, self.tenant_id)
        if ref.startswith("local://"):
            try:
                return dataset_refs.local_path(self.settings, tenant, ref)
            except dataset_refs.DatasetRefError as exc:
                raise FileNotFoundError(str(exc)) from None
        found = dataset_refs.problem(self.settings, tenant, ref)
        if found:
            raise FileNotFoundError(found)
        return None


def check(session: Session, settings: Settings, *, tenant_id: str, spec: JobSpec) -> Admission:
    """Every problem of a parsed spec (as `served` made it) for this tenant on this
    service, with its pointer; none: it may be queued. Sizing a sweep stops after
    KD_SWEEP_SIZING_S (the worker sizes every trial before the job starts)."""
    bounds = replace(limits(settings), sweep_sizing_s=settings.sweep_sizing_s)
    found = admit(spec, TenantFiles(session, settings, tenant_id), bounds)
    found.problems = (
        found.problems
        + _service_problems(settings, spec)
        + _endpoint_problems(session, settings, tenant_id, spec.teacher_endpoint)
    )
    return found


def teacher_score_warnings(found: Admission) -> list[str]:
    """For `POST /v1/jobs/validate` (not on submission: it runs the teacher): the
    preflight's verdict where it is cheap to compute now."""
    said = teacher_score(found.local) if found.local is not None else None
    return [f"scored now, {said}"] if said else []


def served(settings: Settings, spec: JobSpec) -> JobSpec:
    """A set's in-memory budget (dataset.memory_budget_mb, past which it streams) is at
    most the service's limit on a dataset in memory: the default is lowered to it."""
    limit = settings.max_dataset_bytes // 1024**2
    ds = spec.dataset
    if "memory_budget_mb" in ds.model_fields_set or ds.memory_budget_mb <= limit:
        return spec
    dataset = ds.model_copy(update={"memory_budget_mb": max(1, limit)})
    return spec.model_copy(update={"dataset": dataset})


def _service_problems(settings: Settings, spec: JobSpec) -> list[Problem]:
    """The webhook URL passes the egress policy; some executor runs the job's queue; a
    dataset's memory budget is within the service's limit."""
    problems = []
    if spec.dataset.memory_budget_mb * 1024**2 > settings.max_dataset_bytes:
        limit = settings.max_dataset_bytes // 1024**2
        problems.append(
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
            problems.append(("/webhook_url", str(exc)))
    if spec.resources.nodes > 1 and not settings.broker_url:
        problems.append(
            (
                "/resources/nodes",
                f"a job on {spec.resources.nodes} hosts needs Celery workers on that many "
                "hosts (KD_BROKER_URL, and KD_NODE_ADDR on each: docs/multi-host.md); this "
                "service runs its jobs on one host",
            )
        )
    pools = settings.served_pools()
    queue, _ = route_for(spec.model_dump(mode="json"))
    if pools is not None and queue not in pools:
        problems.append(
            (
                "/resources",
                f"no executor of this service runs queue {queue!r} (resources.gpu_type and "
                f"resources.gpus pick it); it runs {sorted(pools)}",
            )
        )
    return problems


def _endpoint_problems(
    session: Session, settings: Settings, tenant_id: str, endpoint: EndpointSpec | None
) -> list[Problem]:
    """A teacher endpoint: its URL passes the egress policy (KD_ENDPOINT_ALLOW for an
    in-house server); its key is a credential this tenant stored, never a path on the
    service's disk; its address is the worker's to pin, not the client's to choose."""
    if endpoint is None:
        return []
    where, problems = "/teacher/endpoint", []
    try:
        resolve(endpoint.url, AllowList.parse(settings.endpoint_allow), ALLOW)
    except EgressRefused as exc:
        problems.append((f"{where}/url", str(exc)))
    if endpoint.api_key_file is not None:
        problems.append(
            (
                f"{where}/api_key_file",
                "a path on the service's machines is not yours to name: store the key with "
                "PUT /v1/credentials/{name} and give its name in credential",
            )
        )
    if endpoint.address is not None:
        problems.append(
            (f"{where}/address", "the service pins the address its egress check approved")
        )
    name = endpoint.credential
    if name is not None and credentials.find(session, tenant_id, name) is None:
        problems.append(
            (
                f"{where}/credential",
                f"no credential {name!r}: store it first with PUT /v1/credentials/{name}",
            )
        )
    return problems
