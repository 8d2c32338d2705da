"""What a worker needs to run a job: its spec with file and artifact ids made paths on
this host, and a dataset by reference fetched (outside any transaction)."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.orm import Session

from app import storage
from app.db.models import Job, Tenant
from app.services import dataset_refs
from app.services.files import resolve_reference
from app.settings import Settings
from kdcore.spec import model_entries


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
