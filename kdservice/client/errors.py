"""What the client raises: the server's problem JSON as an exception."""

from __future__ import annotations

from typing import Any


class KDClientError(Exception):
    """Base class of the client's errors."""


class ApiError(KDClientError):
    """An error response (RFC 9457 problem JSON): status, title, detail and, for invalid
    input, `errors` as [{"loc": JSON pointer, "msg": ...}]."""

    def __init__(self, status: int, title: str, detail: str, errors: list[dict[str, Any]]):
        self.status, self.title, self.detail, self.errors = status, title, detail, errors
        where = "; ".join(f"{e.get('loc')}: {e.get('msg')}" for e in errors[:5])
        if len(errors) == 1 and errors[0].get("msg") == detail:  # the reason, once
            super().__init__(f"{status} {title}: {where}")
        else:
            super().__init__(f"{status} {title}: {detail}" + (f" ({where})" if where else ""))

    @classmethod
    def from_response(cls, status: int, body: bytes, reason: str = "") -> ApiError:
        import json

        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            text = body.decode("utf-8", "replace").strip()[:200]
            return cls(status, reason or "Error", text or "no details", [])
        return cls(
            status,
            str(data.get("title") or reason or "Error"),
            str(data.get("detail") or ""),
            list(data.get("errors") or []),
        )


class DigestMismatch(KDClientError):
    """A downloaded file does not have the sha256 the server announced."""


class WaitTimeout(KDClientError):
    """wait() ran out of time before the job ended."""
