"""/v1/jobs: thin routes over app.services (admission, jobs, job_reads)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from app.api.deps import JobReadsDep, OwnedJob, SessionDep, SettingsDep, TenantDep
from app.api.schemas import (
    ArtifactOut,
    CheckpointOut,
    EventList,
    EventOut,
    JobList,
    JobOut,
    MetricsOut,
    ValidateOut,
    ValidationItem,
    problem_responses,
    render_job,
)
from app.api.sse import event_stream
from app.broker import publish
from app.db.models import STATUSES, hosts_needed
from app.errors import ProblemError
from app.services import admission, job_reads
from app.services import jobs as service
from app.settings import Settings
from kdcore.spec import JobSpec

router = APIRouter(
    prefix="/v1/jobs", tags=["jobs"], responses=problem_responses(400, 401, 404, 409, 422, 429)
)
Limit = Annotated[int, Query(ge=1, le=200)]


@router.post(
    "",
    status_code=201,
    response_model=JobOut,
    responses={422: {"description": "invalid spec (problem JSON with pointers)"}},
)
def create_job(
    spec: JobSpec,
    session: SessionDep,
    settings: SettingsDep,
    tenant: TenantDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> JSONResponse:
    submission = service.create_job(
        session, settings, tenant_id=tenant.id, spec=spec, idempotency_key=idempotency_key
    )
    body, created = submission.replay, False
    if submission.job is not None:
        body, created = render_job(job_reads.job_view(session, submission.job)), True
        if idempotency_key:
            winner = service.remember_response(
                session, tenant.id, idempotency_key, submission, body
            )
            if winner is not None:  # a concurrent request with this key was first
                body, created = winner, False
    assert body is not None
    session.commit()
    if created:
        _publish(settings, body)
    return JSONResponse(body, status_code=201, headers={"Location": f"/v1/jobs/{body['id']}"})


@router.post("/validate", response_model=ValidateOut)
def validate_job(
    session: SessionDep,
    settings: SettingsDep,
    tenant: TenantDep,
    spec: Annotated[dict[str, Any], Body(description="a job spec")],
) -> ValidateOut:
    parsed, errors = admission.parse(spec)
    warnings: list[str] = []
    if parsed is not None:
        found = admission.check(
            session, settings, tenant_id=tenant.id, spec=admission.served(settings, parsed)
        )
        errors, warnings = found.problems, found.warnings
        if not errors:  # the teacher's score, where it is cheap to compute now
            warnings += admission.teacher_score_warnings(found)
    return ValidateOut(
        valid=not errors,
        warnings=warnings,
        errors=[ValidationItem(loc=loc or "/", msg=msg) for loc, msg in errors],
    )


@router.get("", response_model=JobList)
async def list_jobs(
    reads: JobReadsDep,
    tenant: TenantDep,
    limit: Limit = 50,
    after: Annotated[str | None, Query(max_length=64)] = None,
    status: Annotated[str | None, Query(max_length=20)] = None,
    name: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    if status is not None and status not in STATUSES:
        raise ProblemError(
            422,
            "Unprocessable Content",
            f"status must be one of {STATUSES}",
            errors=[{"loc": "/query/status", "msg": f"one of {list(STATUSES)}"}],
        )
    query = job_reads.JobQuery(limit, after, status, name)
    return await reads.page(tenant.id, query)


@router.get(
    "/{job_id}",
    response_model=JobOut,
    responses={304: {"description": "not modified: the If-None-Match ETag is current"}},
)
async def get_job(
    job_id: str,
    reads: JobReadsDep,
    tenant: TenantDep,
    if_none_match: Annotated[str | None, Header(max_length=1024)] = None,
) -> Response:
    """The job, with a strong ETag (its version); `If-None-Match` with the current one is
    answered 304. `poll_after_s` says when polling again is worth it."""
    return await reads.job(tenant.id, job_id, if_none_match)


@router.post("/{job_id}/cancel", status_code=202, response_model=JobOut)
def cancel_job(
    job_id: str, session: SessionDep, settings: SettingsDep, tenant: TenantDep
) -> dict[str, Any]:
    job, after = service.cancel_job(session, tenant_id=tenant.id, job_id=job_id)
    session.commit()  # a queued job ends here: its webhook is in the outbox now
    if after is not None:
        after.run(settings)
    return render_job(job_reads.job_view(session, job))


@router.post("/{job_id}/retry", status_code=201, response_model=JobOut)
def retry_job(
    job_id: str,
    session: SessionDep,
    settings: SettingsDep,
    tenant: TenantDep,
    from_checkpoint: bool = False,
) -> JSONResponse:
    job = service.retry_job(
        session, settings, tenant_id=tenant.id, job_id=job_id, from_checkpoint=from_checkpoint
    )
    body = render_job(job_reads.job_view(session, job))
    session.commit()
    _publish(settings, body)
    return JSONResponse(body, status_code=201, headers={"Location": f"/v1/jobs/{body['id']}"})


@router.delete("/{job_id}", status_code=204)
def delete_job(
    job_id: str,
    session: SessionDep,
    settings: SettingsDep,
    reads: JobReadsDep,
    tenant: TenantDep,
) -> Response:
    service.delete_job(session, settings, tenant_id=tenant.id, job_id=job_id)
    session.commit()
    reads.forget(job_id)  # this process at once; the others within KD_JOB_CACHE_S
    return Response(status_code=204)


@router.get("/{job_id}/events", response_model=EventList)
def list_events(
    job: OwnedJob,
    session: SessionDep,
    limit: Limit = 100,
    after: Annotated[int, Query(ge=0)] = 0,
) -> EventList:
    rows = job_reads.events_after(session, job.id, after, limit + 1)
    has_more = len(rows) > limit
    rows = rows[:limit]
    return EventList(
        data=[EventOut.model_validate(e) for e in rows],
        has_more=has_more,
        next_after=rows[-1].seq if has_more else None,
    )


@router.get(
    "/{job_id}/events/stream",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
def stream_events(
    job: OwnedJob,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    last_event_id: Annotated[str | None, Header(max_length=20)] = None,
    after: Annotated[int | None, Query(ge=0)] = None,
) -> StreamingResponse:
    job_id = job.id
    session.close()  # the stream may last hours: give the connection back to the pool now
    start = after if after is not None else 0
    if last_event_id and last_event_id.isdigit():
        start = int(last_event_id)
    return StreamingResponse(
        event_stream(request, settings, job_id, start),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get("/{job_id}/metrics", response_model=MetricsOut)
def job_metrics(job: OwnedJob, session: SessionDep) -> MetricsOut:
    return MetricsOut(job_id=job.id, points=job_reads.metric_series(session, job.id))


@router.get("/{job_id}/checkpoints", response_model=list[CheckpointOut])
def job_checkpoints(job: OwnedJob, session: SessionDep) -> list[CheckpointOut]:
    return [CheckpointOut.model_validate(c) for c in job_reads.list_checkpoints(session, job.id)]


@router.get("/{job_id}/artifacts", response_model=list[ArtifactOut])
def job_artifacts(job: OwnedJob, session: SessionDep) -> list[ArtifactOut]:
    return [ArtifactOut.model_validate(a) for a in job_reads.list_artifacts(session, job.id)]


def _publish(settings: Settings, body: dict[str, Any]) -> None:
    """Wake a worker of the new job's pool: one message per host it needs."""
    copies = hosts_needed(body["spec"])
    publish(settings.broker_url, body["id"], body["queue"], body["priority"], copies)
