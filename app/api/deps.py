"""Dependencies: settings, a database session, the caller's tenant, a job of theirs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.api.job_reads import JobReads
from app.db.models import Job
from app.db.session import get_sessionmaker, session_scope
from app.errors import ProblemError
from app.services.job_reads import get_job
from app.services.keys import Caller, cached_caller, tenant_for_key
from app.settings import Settings

bearer = HTTPBearer(auto_error=False, description="API key: `Authorization: Bearer kd_...`")


# Dependencies that do no I/O are `async def`: FastAPI runs a plain `def` dependency in
# its threadpool, a hop that costs more than an empty route (bench/api_load.py).


async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


async def get_job_reads(request: Request) -> JobReads:
    return request.app.state.job_reads  # type: ignore[no-any-return]


JobReadsDep = Annotated[JobReads, Depends(get_job_reads)]


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


def _look_up_key(settings: Settings, key: str) -> Caller | None:
    # a session of its own, closed before the route runs: a long SSE stream must not
    # hold a connection for its key
    with session_scope(settings.db_url) as session:
        return tenant_for_key(session, key, settings.db_url, settings.auth_cache_s)


async def get_tenant(
    settings: SettingsDep,
    reads: JobReadsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Caller:
    """The caller: from the per-process cache (no I/O, no thread hop), else looked up."""
    if credentials is None:
        raise _unauthorized("missing `Authorization: Bearer <api key>`")
    key = credentials.credentials
    tenant = cached_caller(key, settings.db_url, settings.auth_cache_s)
    if tenant is None:  # one lookup per key at a time (its cache expires for all at once)
        tenant = await reads.flights.run(("key", key), _look_up_key, settings, key)
    if tenant is None:
        raise _unauthorized("the API key is unknown or revoked")
    return tenant


TenantDep = Annotated[Caller, Depends(get_tenant)]


def owned_job(job_id: str, session: SessionDep, tenant: TenantDep) -> Job:
    """The job in the path, if it is the caller's (another tenant's answers 404, like an
    unknown id)."""
    job = get_job(session, tenant_id=tenant.id, job_id=job_id)
    # end the read now: the route runs in another thread call, and an SSE route holds
    # its request for hours; the job object stays usable (expire_on_commit is off)
    session.commit()
    return job


OwnedJob = Annotated[Job, Depends(owned_job)]
