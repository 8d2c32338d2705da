"""The one error mapping: everything the API answers with an error is RFC 9457
`application/problem+json`, and never a stack trace."""

from __future__ import annotations

import logging
import math
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import (
    INVALID,
    Conflict,
    DomainError,
    Invalid,
    LimitExceeded,
    NotFound,
    ProblemError,
    TooLarge,
)
from kdcore.errors import MAX_ERRORS, capped, unknown_field

log = logging.getLogger("kd.api")
PROBLEM = "application/problem+json"
TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    416: "Range Not Satisfiable",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
}


def from_domain(exc: DomainError) -> ProblemError:
    """The one mapping from what a service says to what HTTP answers."""
    detail = str(exc)
    if isinstance(exc, NotFound):
        return ProblemError(404, "Not Found", detail)
    if isinstance(exc, Conflict):
        return ProblemError(409, "Conflict", detail)
    if isinstance(exc, Invalid):
        errors = [{"loc": loc or "/", "msg": msg} for loc, msg in capped(exc.errors)]
        return ProblemError(422, "Unprocessable Content", detail, errors=errors)
    if isinstance(exc, LimitExceeded):
        retry = str(max(1, math.ceil(exc.retry_after_s)))
        return ProblemError(429, "Too Many Requests", detail, headers={"Retry-After": retry})
    if isinstance(exc, TooLarge):
        return ProblemError(413, "Content Too Large", detail)
    return ProblemError(400, "Bad Request", detail)


def problem_response(exc: ProblemError, request: Request) -> JSONResponse:
    return JSONResponse(
        exc.body(request.url.path), status_code=exc.status, media_type=PROBLEM, headers=exc.headers
    )


def _pointer(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:] if parts[0] == "body" else parts
    return "/" + "/".join(parts)


def _message(request: Request, exc: RequestValidationError, error: dict[str, Any]) -> str:
    """pydantic's message, with what the user needs to fix it: where broken JSON breaks,
    the header a body without `Content-Type: application/json` lacks, the closest names
    to an unknown field."""
    kind, loc = error.get("type", ""), tuple(error.get("loc", ()))
    message = str(error.get("msg", "invalid"))
    if kind == "json_invalid":
        doc = exc.body if isinstance(exc.body, str) else ""
        at = int(loc[-1]) if loc and isinstance(loc[-1], int) else 0
        line, column = doc.count("\n", 0, at) + 1, at - (doc.rfind("\n", 0, at) + 1) + 1
        reason = (error.get("ctx") or {}).get("error", "JSON decode error")
        return f"the body is not valid JSON: {reason} at line {line}, column {column}"
    body_root = loc == ("body",)
    content_type = request.headers.get("content-type", "")
    if body_root and "json" not in content_type and kind in ("dict_type", "model_attributes_type"):
        shown = content_type.split(";")[0][:100]  # the client's header, echoed bounded
        sent = f"as {shown}" if content_type else "without a Content-Type"
        return (
            f"{message}: the body was sent {sent}; send the JSON with the header "
            "`Content-Type: application/json` (curl: -H 'Content-Type: application/json')"
        )
    if kind == "extra_forbidden" and loc and loc[0] == "body":
        model = _body_model(request)
        if model is not None:
            return unknown_field(model, loc[1:])
    return message


def _body_model(request: Request) -> type[BaseModel] | None:
    route = request.scope.get("route")
    field = getattr(route, "body_field", None)
    annotation = getattr(getattr(field, "field_info", None), "annotation", None)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method documented for `path` across routes (Starlette lists only one route's).
    A literal path (`/v1/jobs/validate`) wins over a template (`/v1/jobs/{job_id}`)."""
    paths = app.openapi()["paths"]
    if path in paths:
        return sorted(m.upper() for m in paths[path])
    methods: set[str] = set()
    for template, operations in paths.items():
        if re.fullmatch(re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(template)), path):
            methods |= {m.upper() for m in operations}
    return sorted(methods)


def install(app: FastAPI) -> None:
    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(exc, request)

    @app.exception_handler(DomainError)
    async def _domain(request: Request, exc: DomainError) -> JSONResponse:
        return problem_response(from_domain(exc), request)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        found = [
            # broken JSON: pydantic puts the character offset where a field goes
            (
                "/" if e.get("type") == "json_invalid" else _pointer(e.get("loc", ())),
                _message(request, exc, e),
            )
            for e in exc.errors()[: MAX_ERRORS + 1]
        ]
        errors = [{"loc": loc or "/", "msg": msg} for loc, msg in capped(found)]
        return problem_response(
            ProblemError(422, "Unprocessable Content", INVALID, errors=errors), request
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        title = TITLES.get(exc.status_code, "Error")
        detail = exc.detail if isinstance(exc.detail, str) else title
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(_allowed_methods(app, request.url.path))
        return problem_response(
            ProblemError(exc.status_code, title, detail, headers=headers), request
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(
            ProblemError(
                500, "Internal Server Error", "an unexpected error occurred; it was logged"
            ),
            request,
        )
