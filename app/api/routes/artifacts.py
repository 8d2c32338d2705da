"""Artifacts: the tenant's list by name, and download (strong ETag: the sha256; single byte
ranges; conditional GET)."""

from __future__ import annotations

import base64
import re
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from app import storage
from app.api.deps import SessionDep, SettingsDep, TenantDep
from app.api.schemas import ArtifactOut, TenantArtifactOut, problem_responses
from app.errors import ProblemError
from app.services.job_reads import get_artifact, list_tenant_artifacts

router = APIRouter(
    prefix="/v1/artifacts", tags=["artifacts"], responses=problem_responses(401, 404, 416, 422)
)
RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """(start, end inclusive) for one satisfiable range; None to send the whole file.
    Raises 416 when the range cannot be satisfied."""
    match = RANGE.match(header.strip())
    if not match:
        return None  # RFC 9110: an unparsable or multi-range header may be ignored
    first, last = match.groups()
    if first == "" and last == "":
        return None
    if first == "":
        length = int(last)
        if length == 0:
            raise ProblemError(
                416,
                "Range Not Satisfiable",
                "empty suffix range",
                headers={"Content-Range": f"bytes */{size}"},
            )
        return max(0, size - length), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        raise ProblemError(
            416,
            "Range Not Satisfiable",
            f"the artifact has {size} bytes",
            headers={"Content-Range": f"bytes */{size}"},
        )
    return start, end


DOWNLOAD_RESPONSES: dict[int | str, dict] = {
    200: {"content": {"application/octet-stream": {}}},
    206: {"description": "partial content"},
    304: {"description": "not modified"},
    416: {"description": "range not satisfiable"},
}


@router.get("", response_model=list[TenantArtifactOut])
def list_artifacts(
    session: SessionDep,
    tenant: TenantDep,
    name: Annotated[str, Query(min_length=1, max_length=255)] = "student.safetensors",
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> list[TenantArtifactOut]:
    """The tenant's artifacts of one name, newest first, with the job that made each
    (by default its trained students' weights, which can teach a new job)."""
    return [
        TenantArtifactOut(
            **ArtifactOut.model_validate(art).model_dump(),
            job_name=job.name,
            job_kind=job.kind,
            arch=(job.spec.get("student") or {}).get("arch"),
        )
        for art, job in list_tenant_artifacts(session, tenant.id, name, limit)
    ]


@router.head(
    "/{artifact_id}/content", operation_id="head_artifact_content", responses=DOWNLOAD_RESPONSES
)
@router.get(
    "/{artifact_id}/content", operation_id="download_artifact_content", responses=DOWNLOAD_RESPONSES
)
def download(
    artifact_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    tenant: TenantDep,
) -> Response:
    art = get_artifact(session, settings, tenant.id, artifact_id)
    size = art.bytes
    etag = f'"{art.sha256}"'
    digest_b64 = base64.b64encode(bytes.fromhex(art.sha256)).decode()
    headers = {
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Repr-Digest": f"sha-256=:{digest_b64}:",
        "X-Checksum-SHA256": art.sha256,
        "Content-Disposition": f'attachment; filename="{art.name}"',
    }
    inm = request.headers.get("if-none-match")
    if inm and (inm.strip() == "*" or etag in [t.strip() for t in inm.split(",")]):
        return Response(status_code=304, headers=headers)
    start, end, status = 0, size - 1, 200
    range_header = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if range_header and (if_range is None or if_range.strip() == etag):
        parsed = _parse_range(range_header, size)
        if parsed is not None:
            (start, end), status = parsed, 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    length = max(0, end - start + 1)
    headers["Content-Length"] = str(length)
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers, media_type=art.content_type)
    return StreamingResponse(
        storage.read_range(settings, art.path, start, length),
        status_code=status,
        headers=headers,
        media_type=art.content_type,
    )
