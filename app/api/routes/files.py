"""/v1/files: upload teacher checkpoints and dataset archives."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from app.api.deps import SessionDep, SettingsDep, TenantDep
from app.api.schemas import FileList, FileOut, problem_responses
from app.api.uploads import receive_upload
from app.services import files as service
from app.services import quotas

router = APIRouter(
    prefix="/v1/files",
    tags=["files"],
    responses=problem_responses(400, 401, 404, 409, 413, 415, 422, 429),
)

UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "purpose": {"type": "string", "enum": list(service.PURPOSES)},
                    },
                }
            }
        },
    }
}


@router.post(
    "",
    status_code=201,
    response_model=FileOut,
    openapi_extra=UPLOAD_BODY,
    responses={413: {"description": "over the upload limit"}},
)
async def upload_file(
    request: Request, session: SessionDep, settings: SettingsDep, tenant: TenantDep
) -> JSONResponse:
    declared = request.headers.get("content-length", "")
    # refuse before reading the body if the tenant's storage is already full
    await run_in_threadpool(
        quotas.check_storage,
        session,
        settings,
        tenant.id,
        min(int(declared), settings.max_upload_bytes) if declared.isdigit() else 0,
    )
    session.commit()  # end the read: no connection is held while the body streams in
    filename, purpose, tmp, size, sha = await receive_upload(request, settings)
    row = await run_in_threadpool(
        service.store_upload, session, settings, tenant.id, filename, purpose, tmp, size, sha
    )
    session.commit()
    return JSONResponse(
        FileOut.model_validate(row).model_dump(),
        status_code=201,
        headers={"Location": f"/v1/files/{row.id}"},
    )


@router.get("", response_model=FileList)
def list_files(
    session: SessionDep,
    tenant: TenantDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    after: Annotated[str | None, Query(max_length=64)] = None,
    purpose: Annotated[Literal["checkpoint", "dataset", "teacher_outputs"] | None, Query()] = None,
    sha256: Annotated[
        str | None,
        Query(pattern="^[0-9a-f]{64}$", description="only files with this content (hex)"),
    ] = None,
) -> FileList:
    rows, has_more = service.list_files(session, tenant.id, limit, after, purpose, sha256)
    return FileList(
        data=[FileOut.model_validate(f) for f in rows],
        has_more=has_more,
        next_after=rows[-1].id if has_more else None,
    )


@router.get("/{file_id}", response_model=FileOut)
def get_file(file_id: str, session: SessionDep, tenant: TenantDep) -> FileOut:
    return FileOut.model_validate(service.get_file(session, tenant.id, file_id))


@router.delete("/{file_id}", status_code=204)
def delete_file(
    file_id: str, session: SessionDep, settings: SettingsDep, tenant: TenantDep
) -> Response:
    service.delete_file(session, settings, tenant.id, file_id)
    session.commit()
    return Response(status_code=204)
