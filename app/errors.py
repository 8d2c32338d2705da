"""The one error type services raise; the API turns it into RFC 9457 problem JSON."""

from __future__ import annotations

from typing import Any


class ProblemError(Exception):
    def __init__(
        self,
        status: int,
        title: str,
        detail: str = "",
        errors: list[dict[str, Any]] | None = None,
        type_: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(detail or title)
        self.status, self.title, self.detail = status, title, detail
        self.errors = errors
        self.type = type_ or f"https://kdservice.dev/problems/{title.lower().replace(' ', '-')}"
        self.headers = headers or {}

    def body(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        if self.errors is not None:
            body["errors"] = self.errors
        return body


def not_found(kind: str, id_: str) -> ProblemError:
    return ProblemError(404, "Not Found", f"no {kind} {id_!r}")


def invalid(errors: list[tuple[str, str]], detail: str = "the request is invalid") -> ProblemError:
    return ProblemError(
        422,
        "Unprocessable Content",
        detail,
        errors=[{"loc": loc or "/", "msg": msg} for loc, msg in errors],
    )
