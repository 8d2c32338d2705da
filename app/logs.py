"""Structured logs: one JSON object per line with the request id and job id in scope.

`request_id` is set by the API's middleware (from the caller's X-Request-ID, or a new
one, echoed in the response); `job_id` by the worker while it runs a job. Both are
context variables, so they follow the code that handles one request or one job.
"""

from __future__ import annotations

import json
import logging
import logging.config
import sys
import time
from contextvars import ContextVar
from typing import Any

from app.settings import Settings

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
job_id: ContextVar[str | None] = ContextVar("job_id", default=None)

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, var in (("request_id", request_id), ("job_id", job_id)):
            value = getattr(record, key, None) or var.get()
            if value:
                entry[key] = value
        # fields passed with logger.info(..., extra={...})
        for key, value in record.__dict__.items():
            if key not in _RESERVED and key not in entry and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """One readable line for a person at a terminal: time, level, message, and the job or
    request it is about."""

    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"{time.strftime('%H:%M:%S', time.localtime(record.created))} "
            f"{record.levelname:<7} {record.getMessage()}"
        )
        scope = [
            f"{key}={value}"
            for key, var in (("job", job_id), ("request", request_id))
            if (value := getattr(record, f"{key}_id", None) or var.get())
        ]
        if scope:
            line += f"  [{' '.join(scope)}]"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def log_format(settings: Settings, stream: Any = None) -> str:
    """KD_LOG_FORMAT, with `auto` resolved: text when stderr is a terminal, else JSON."""
    if settings.log_format != "auto":
        return settings.log_format
    stream = stream if stream is not None else sys.stderr
    return "text" if hasattr(stream, "isatty") and stream.isatty() else "json"


def dict_config(settings: Settings, stream: Any = None) -> dict[str, Any]:
    """Root logging for `kd serve` and `kd worker` (KD_LOG_FORMAT, KD_LOG_LEVEL), as a
    logging.config dict: uvicorn applies it in each of its worker processes too."""
    name = "JsonFormatter" if log_format(settings, stream) == "json" else "TextFormatter"
    formatter: dict[str, Any] = {"()": f"app.logs.{name}"}
    handler = {"class": "logging.StreamHandler", "formatter": "kd", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"kd": formatter},
        "handlers": {"stderr": handler},
        "root": {"handlers": ["stderr"], "level": settings.log_level.upper()},
        # Alembic's own lines ("Context impl ...", each step) are noise at a start: an
        # upgrade is one line of ours (kd.db, app/db/migrate.py)
        "loggers": {"alembic": {"level": "WARNING"}},
    }


def configure_logging(settings: Settings) -> None:
    logging.config.dictConfig(dict_config(settings))
