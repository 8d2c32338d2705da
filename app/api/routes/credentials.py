"""/v1/credentials: a tenant's secrets for teacher endpoints, write-only (a spec names
one in teacher.endpoint.credential; no route ever returns its value)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from app.api.deps import SessionDep, SettingsDep, TenantDep
from app.api.schemas import CredentialIn, CredentialList, CredentialOut, problem_responses
from app.services import credentials as service

router = APIRouter(
    prefix="/v1/credentials",
    tags=["credentials"],
    responses=problem_responses(400, 401, 404, 409, 413, 415, 422, 429),
)

Name = Annotated[
    str,
    Path(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="letters, digits, '_', '.', '-'; at most 64",
    ),
]


@router.put(
    "/{name}",
    response_model=CredentialOut,
    status_code=200,
    responses={201: {"model": CredentialOut, "description": "stored under a new name"}},
)
def put_credential(
    name: Name,
    body: CredentialIn,
    session: SessionDep,
    settings: SettingsDep,
    tenant: TenantDep,
    response: Response,
) -> CredentialOut:
    """Store the secret under this name (201), or replace it (200). The answer never
    holds the value."""
    created = service.put(session, settings, tenant.id, name, body.value.get_secret_value())
    session.commit()
    if created:
        response.status_code = 201
    return CredentialOut.model_validate(service.get(session, tenant.id, name))


@router.get("", response_model=CredentialList)
def list_credentials(session: SessionDep, tenant: TenantDep) -> CredentialList:
    return CredentialList(
        data=[CredentialOut.model_validate(r) for r in service.list_names(session, tenant.id)]
    )


@router.get("/{name}", response_model=CredentialOut)
def get_credential(name: Name, session: SessionDep, tenant: TenantDep) -> CredentialOut:
    return CredentialOut.model_validate(service.get(session, tenant.id, name))


@router.delete("/{name}", status_code=204)
def delete_credential(name: Name, session: SessionDep, tenant: TenantDep) -> Response:
    """Refused (409) while an active job names it."""
    service.delete(session, tenant.id, name)
    session.commit()
    return Response(status_code=204)
