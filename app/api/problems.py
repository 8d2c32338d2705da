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
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import (
    Conflict,
    DomainError,
    Invalid,
    LimitExceeded,
    NotFound,
    ProblemError,
    TooLarge,
)

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
        errors = [{"loc": loc or "/", "msg": msg} for loc, msg in exc.errors]
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
        errors = [
            {"loc": _pointer(e.get("loc", ())), "msg": e.get("msg", "invalid")}
            for e in exc.errors()
        ]
        return problem_response(
            ProblemError(422, "Unprocessable Content", "the request is invalid", errors=errors),
            request,
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
