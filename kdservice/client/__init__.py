"""The Python client of kdservice (httpx): `Client` (sync) and `AsyncClient`.

Both retry with backoff on 429/503, send an idempotency key with every create, follow a
job's SSE stream across reconnects (Last-Event-ID), wait for a job, and download
artifacts with Range resume and a sha256 check. See kdservice/client/sync.py.
"""

from kdservice.client.aio import AsyncClient
from kdservice.client.config import resolve
from kdservice.client.errors import ApiError, DigestMismatch, KDClientError, WaitTimeout
from kdservice.client.models import (
    Artifact,
    CredentialInfo,
    Event,
    EventPage,
    FileInfo,
    Job,
    JobPage,
    Progress,
    Transition,
    Validation,
)
from kdservice.client.sync import Client

__all__ = [
    "ApiError",
    "Artifact",
    "AsyncClient",
    "Client",
    "DigestMismatch",
    "Event",
    "EventPage",
    "CredentialInfo",
    "FileInfo",
    "Job",
    "JobPage",
    "KDClientError",
    "Progress",
    "Transition",
    "Validation",
    "WaitTimeout",
    "resolve",
]
