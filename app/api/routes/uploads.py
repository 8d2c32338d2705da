"""/v1/uploads: a file sent in parts, resumable (app.services.uploads)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from app.api.deps import SessionDep, SettingsDep, TenantDep
from app.api.schemas import FileOut, PartOut, UploadCreate, UploadOut, problem_responses
from app.api.uploads import receive_part
from app.errors import NotFound
from app.services import uploads as service

router = APIRouter(
    prefix="/v1/uploads",
    tags=["files"],
    responses=problem_responses(400, 401, 404, 409, 413, 422, 429),
)
PartNumber = Annotated[int, Path(ge=1, le=service.MAX_PARTS)]
PART_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


@router.post("", status_code=201, response_model=UploadOut)
def create_upload(
    body: UploadCreate, session: SessionDep, settings: SettingsDep, tenant: TenantDep
) -> Any:
    """Declare a file to send in parts: its name, purpose, size and sha256. The answer
    gives the part size and the number of parts."""
    row = service.create(
        session, settings, tenant.id, body.filename, body.purpose, body.bytes, body.sha256
    )
    session.commit()
    return service.describe(session, row)


@router.get("/{upload_id}", response_model=UploadOut)
def get_upload(upload_id: str, session: SessionDep, tenant: TenantDep) -> Any:
    """The parts received so far (each with its sha256) and those missing: what a client
    resuming an interrupted upload sends next."""
    return service.describe(session, service.get(session, tenant.id, upload_id))


@router.put("/{upload_id}/parts/{number}", response_model=PartOut, openapi_extra=PART_BODY)
async def put_part(
    upload_id: str,
    number: PartNumber,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    tenant: TenantDep,
) -> Any:
    """One part's bytes (exactly the part size; the last part holds the rest). Sending a
    part again replaces it."""
    row = await run_in_threadpool(service.get, session, tenant.id, upload_id)
    expected = service.part_length(row, number)
    service.accepting_parts(row)
    session.commit()  # no connection held while the body streams in
    try:
        size, sha = await receive_part(request, service.part_path(settings, row, number), expected)
    except FileNotFoundError:  # deleted (its folder with it) while the part streamed in
        raise NotFound("upload", upload_id) from None
    await run_in_threadpool(service.record_part, session, row, number, size, sha)
    session.commit()
    return {"number": number, "bytes": size, "sha256": sha}


@router.post("/{upload_id}/complete", status_code=201, response_model=FileOut)
def complete_upload(
    upload_id: str, session: SessionDep, settings: SettingsDep, tenant: TenantDep
) -> JSONResponse:
    """Assemble the parts, check the sha256 declared, and store the file (checked as
    any upload is); the answer is the file, usable as a checkpoint or dataset id."""
    row = service.get(session, tenant.id, upload_id)
    service.claim_completion(session, row)
    try:
        stored = service.complete(session, settings, row)
        session.commit()
    except BaseException:
        service.release_completion(session, row)
        raise
    return JSONResponse(
        FileOut.model_validate(stored).model_dump(mode="json"),
        status_code=201,
        headers={"Location": f"/v1/files/{stored.id}"},
    )


@router.delete("/{upload_id}", status_code=204)
def delete_upload(
    upload_id: str, session: SessionDep, settings: SettingsDep, tenant: TenantDep
) -> Response:
    service.abort(session, settings, service.get(session, tenant.id, upload_id))
    session.commit()
    return Response(status_code=204)
