"""Job reads (`GET /v1/jobs/{id}`, `GET /v1/jobs`) at close to the cost of an empty route.

Polling a job is the most common integration, so a read avoids every cost it can:

- Every job has a version (`jobs.version`), bumped by each change a client can see. Its
  ETag is that version (plus the queue position while it is queued, and the revision of
  the JSON's shape), so a poller's `If-None-Match` is answered 304 with no rendering.
- A finished job never changes again: its rendered JSON is kept per process (bounded in
  bytes, least recently used out first) and served with no database query and no thread
  hop. An entry older than `KD_JOB_CACHE_S` is checked against the database (one indexed
  row), so a job deleted through another API process disappears within that time; one
  deleted through this process at once.
- A miss costs one thread hop and at most three queries (the job, its queue position
  while queued, its transitions), serialised by pydantic straight to bytes: no dict, no
  second validation, no `json.dumps`; when the caller's ETag is still current, the
  transitions are not loaded and nothing is rendered.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace

from fastapi import Response

from app.api.schemas import JobOut
from app.api.single_flight import SingleFlight
from app.db.models import TERMINAL
from app.db.session import get_engine, session_scope
from app.services import job_reads as service
from app.settings import Settings

# A change to the JSON's shape (a new field) must not be answered 304 from an old ETag.
REVISION = hashlib.sha256(
    json.dumps(JobOut.model_json_schema(), sort_keys=True).encode()
).hexdigest()[:8]
CACHE_CONTROL = "private, no-cache"  # a client may keep it, but asks again each time


def etag_of(version: int, queue_position: int | None) -> str:
    queued = f".q{queue_position}" if queue_position else ""
    return f'"{REVISION}.{version}{queued}"'


def matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 If-None-Match: `*` or any listed tag (W/ prefixes compared weakly)."""
    if not if_none_match:
        return False
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags


@dataclass(frozen=True)
class Rendered:
    """One job's JSON as served, and what decides whether it is still the job's."""

    job_id: str
    tenant_id: str
    version: int
    status: str
    etag: str
    body: bytes
    checked_at: float  # time.monotonic() of the last database check


class RenderedJobs:
    """Finished jobs' rendered JSON, per process: bounded by `max_bytes`, the least
    recently used dropped first. Thread-safe (misses are filled from the threadpool)."""

    def __init__(self, max_bytes: int, recheck_s: float):
        self.max_bytes, self.recheck_s = max_bytes, recheck_s
        self._entries: OrderedDict[str, Rendered] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, job_id: str) -> Rendered | None:
        with self._lock:
            entry = self._entries.get(job_id)
            if entry is not None:
                self._entries.move_to_end(job_id)
            return entry

    def fresh(self, entry: Rendered) -> bool:
        return time.monotonic() - entry.checked_at < self.recheck_s

    def put(self, entry: Rendered) -> None:
        if entry.status not in TERMINAL or not entry.body or len(entry.body) > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(entry.job_id, None)
            if old is not None:
                self._bytes -= len(old.body)
            self._entries[entry.job_id] = entry
            self._bytes += len(entry.body)
            while self._bytes > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= len(dropped.body)

    def forget(self, job_id: str) -> None:
        with self._lock:
            old = self._entries.pop(job_id, None)
            if old is not None:
                self._bytes -= len(old.body)

    def __len__(self) -> int:
        return len(self._entries)


def _render(view: service.JobView) -> Rendered:
    out = JobOut.from_view(view)
    job = view.job
    return Rendered(
        job.id,
        job.tenant_id,
        job.version,
        job.status,
        etag_of(job.version, view.queue_position),
        out.model_dump_json().encode(),
        time.monotonic(),
    )


def _load(settings: Settings, tenant_id: str, job_id: str, if_none_match: str | None) -> Rendered:
    """The job rendered; or, when the caller's ETag is current, only its ETag (empty body:
    a 304 renders nothing and loads no transitions)."""
    with session_scope(settings.db_url) as session:
        job = service.get_job(session, tenant_id=tenant_id, job_id=job_id)
        position = service.queue_position(session, job)
        etag = etag_of(job.version, position)
        if matches(if_none_match, etag):
            return Rendered(job.id, job.tenant_id, job.version, job.status, etag, b"", 0.0)
        transitions = service.transitions_of(session, [job.id]).get(job.id, [])
        return _render(service.JobView(job, transitions, position))


def _recheck(settings: Settings, entry: Rendered) -> Rendered | None:
    """The cached entry, if the job is still there at the same version."""
    with session_scope(settings.db_url) as session:
        current = service.job_version(session, entry.tenant_id, entry.job_id)
    if current != entry.version:
        return None
    return replace(entry, checked_at=time.monotonic())


def _response(entry: Rendered, if_none_match: str | None) -> Response:
    headers = {"ETag": entry.etag, "Cache-Control": CACHE_CONTROL}
    if matches(if_none_match, entry.etag):
        return Response(status_code=304, headers=headers)
    return Response(entry.body, media_type="application/json", headers=headers)


def _page(
    settings: Settings,
    cache: RenderedJobs,
    tenant_id: str,
    query: service.JobQuery,
) -> bytes:
    """The page as JSON: cached finished jobs as they are, the rest rendered (three
    queries for all of them together, in a session opened only if some are missing)."""
    with get_engine(settings.db_url).connect() as conn:
        keys, has_more = service.list_job_versions(conn, tenant_id, query)
    bodies: dict[str, bytes] = {}
    missing = []
    for job_id, version in keys:
        entry = cache.get(job_id)
        if entry is not None and entry.version == version and entry.tenant_id == tenant_id:
            bodies[job_id] = entry.body
        else:
            missing.append(job_id)
    if missing:
        with session_scope(settings.db_url) as session:
            rows = service.jobs_by_id(session, tenant_id, missing)
            for view in service.job_views(session, rows):
                entry = _render(view)
                cache.put(entry)
                bodies[entry.job_id] = entry.body
    present = [job_id for job_id, _ in keys if job_id in bodies]  # deleted meanwhile: gone
    after = json.dumps(present[-1] if has_more and present else None)
    return b"".join(
        (
            b'{"data":[',
            b",".join(bodies[job_id] for job_id in present),
            b'],"has_more":',
            b"true" if has_more else b"false",
            b',"next_after":',
            after.encode(),
            b"}",
        )
    )


class JobReads:
    """One API process's job reads: the cache of finished jobs, and the reader threads
    shared by every read (identical ones in flight answered once)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.cache = RenderedJobs(settings.job_cache_bytes, settings.job_cache_s)
        self.flights = SingleFlight(settings.read_threads)

    async def job(self, tenant_id: str, job_id: str, if_none_match: str | None) -> Response:
        """GET /v1/jobs/{id}: from the cache when the job has finished, else rendered."""
        settings, cache = self.settings, self.cache
        entry = cache.get(job_id)
        if entry is not None and entry.tenant_id == tenant_id:
            if cache.fresh(entry):
                return _response(entry, if_none_match)
            rechecked = await self.flights.run(("recheck", job_id), _recheck, settings, entry)
            if rechecked is not None:
                cache.put(rechecked)
                return _response(rechecked, if_none_match)
            cache.forget(job_id)
        key = ("load", tenant_id, job_id, if_none_match)
        entry = await self.flights.run(key, _load, settings, tenant_id, job_id, if_none_match)
        cache.put(entry)
        return _response(entry, if_none_match)

    async def page(self, tenant_id: str, query: service.JobQuery) -> Response:
        """GET /v1/jobs. Identical requests that arrive while one is being answered share
        its answer (many pollers of the same list cost one query); none sees an older
        state than the database had when it arrived, less the one query in flight."""
        key = ("page", tenant_id, query)
        body = await self.flights.run(key, _page, self.settings, self.cache, tenant_id, query)
        return Response(body, media_type="application/json", headers={"Cache-Control": "no-store"})

    def forget(self, job_id: str) -> None:
        """A job deleted through this process: gone from its cache at once."""
        self.cache.forget(job_id)
