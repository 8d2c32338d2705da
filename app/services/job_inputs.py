"""What a worker needs to run a job: its spec with file and artifact ids made paths on
this host, and a dataset by reference fetched (outside any transaction)."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.orm import Session

from app import storage
from app.db.models import Job, Tenant
from app.services import credentials, dataset_refs
from app.services.egress import AllowList, EgressRefused, resolve
from app.services.files import resolve_reference
from app.settings import Settings
from kdcore.spec import model_entries

ALLOW = "KD_ENDPOINT_ALLOW"  # the setting that lets a teacher endpoint be non-public


class NotRunnable(Exception):
    """The job cannot run on this host now; the message says why (it fails with it)."""


def tenant_name(session: Session, tenant_id: str) -> str:
    tenant = session.get(Tenant, tenant_id)
    return tenant.name if tenant is not None else ""


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
    teacher = spec.get("teacher") or {}
    if teacher.get("outputs"):
        path = resolve_reference(session, job.tenant_id, teacher["outputs"], "teacher_outputs")
        if path is None:
            raise FileNotFoundError(f"/teacher outputs {teacher['outputs']} were deleted")
        teacher["outputs"] = str(storage.local_copy(settings, path))
    ds = spec["dataset"]
    if ds.get("path") and not dataset_refs.is_reference(ds["path"]):  # fetched by the worker
        path = resolve_reference(session, job.tenant_id, ds["path"], "dataset")
        if path is None:
            raise FileNotFoundError(f"dataset {ds['path']} was deleted")
        ds["path"] = str(storage.local_copy(settings, path))
    return spec


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


def endpoint_secret(session: Session, settings: Settings, tenant_id: str, spec: dict) -> str | None:
    """The decrypted credential a teacher endpoint names (kept in memory: the supervisor
    writes it to a key file for the attempt only)."""
    name = credentials.named_by(spec)
    if name is None:
        return None
    row = credentials.find(session, tenant_id, name)
    if row is None:
        raise NotRunnable(f"/teacher/endpoint credential {name!r} was deleted")
    try:
        return credentials.decrypt(settings, row)
    except credentials.SecretsKeyError as exc:
        raise NotRunnable(str(exc)) from None


def pin_endpoint(settings: Settings, spec: dict[str, Any]) -> dict[str, Any]:
    """The teacher endpoint's URL checked against the egress policy again, on this host,
    now (DNS may answer differently than at submission), and the approved address
    pinned in the spec (endpoint.address), so the job connects to nothing else."""
    endpoint = (spec.get("teacher") or {}).get("endpoint")
    if endpoint:
        try:
            target = resolve(endpoint["url"], AllowList.parse(settings.endpoint_allow), ALLOW)
        except EgressRefused as exc:
            raise NotRunnable(f"/teacher/endpoint/url: {exc}") from None
        endpoint["address"] = target.address
    return spec


def with_key_file(spec: dict[str, Any], key_file: Any) -> dict[str, Any]:
    """The spec a training process gets: the endpoint's key as a file path, no name."""
    endpoint = (spec.get("teacher") or {}).get("endpoint")
    if not endpoint or key_file is None:
        return spec
    copy = json.loads(json.dumps(spec))
    copy["teacher"]["endpoint"].update(api_key_file=str(key_file), credential=None)
    return copy
