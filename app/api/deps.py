"""Dependencies: settings, a database session, the caller's tenant, a job of theirs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.db.models import Job
from app.db.session import get_sessionmaker
from app.errors import ProblemError
from app.services.jobs import get_job
from app.services.keys import Caller, tenant_for_key
from app.settings import Settings

bearer = HTTPBearer(auto_error=False, description="API key: `Authorization: Bearer kd_...`")


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


def get_session(settings: SettingsDep) -> Iterator[Session]:
    session = get_sessionmaker(settings.db_url)()
    try:
        yield session
    finally:
        session.rollback()  # anything a route did not commit is discarded
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]


def _unauthorized(detail: str) -> ProblemError:
    return ProblemError(
        401, "Unauthorized", detail, headers={"WWW-Authenticate": 'Bearer realm="kdservice"'}
    )


def get_tenant(
    session: SessionDep,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Caller:
    if credentials is None:
        raise _unauthorized("missing `Authorization: Bearer <api key>`")
    tenant = tenant_for_key(
        session, credentials.credentials, settings.db_url, settings.auth_cache_s
    )
    # end the read transaction: the connection goes back to the pool now, not when the
    # response ends (a long SSE stream must not hold one; the route checks out its own)
    session.commit()
    if tenant is None:
        raise _unauthorized("the API key is unknown or revoked")
    return tenant


TenantDep = Annotated[Caller, Depends(get_tenant)]


def owned_job(job_id: str, session: SessionDep, tenant: TenantDep) -> Job:
    """The job in the path, if it is the caller's (another tenant's answers 404, like an
    unknown id)."""
    job = get_job(session, tenant.id, job_id)
    # end the read now: the route runs in another thread call, and an SSE route holds
    # its request for hours; the job object stays usable (expire_on_commit is off)
    session.commit()
    return job


OwnedJob = Annotated[Job, Depends(owned_job)]
