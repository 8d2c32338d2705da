"""Errors. Services raise the domain errors below (they know nothing of HTTP);
app/api/problems.py maps each to RFC 9457 problem JSON in one place. `ProblemError` is
for the HTTP layer itself (auth, body limits, multipart)."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """Something the caller asked for cannot be done; the message says why."""


class NotFound(DomainError):
    def __init__(self, kind: str, id_: str):
        super().__init__(f"no {kind} {id_!r}")


class Conflict(DomainError):
    """The object's state forbids it now (a job that already ended, a file in use)."""


# the one wording of a 422: the fields' pointers and messages follow in `errors`
INVALID = "the request is invalid"


class Invalid(DomainError):
    """The request is wrong: (JSON pointer, message) for each field."""

    def __init__(self, errors: list[tuple[str, str]], detail: str = INVALID):
        super().__init__(detail)
        self.errors = errors


class LimitExceeded(DomainError):
    """A quota is used up; `retry_after_s`: when trying again can succeed."""

    def __init__(self, detail: str, retry_after_s: float):
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class TooLarge(DomainError):
    """A size the client controls is over its cap."""


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
