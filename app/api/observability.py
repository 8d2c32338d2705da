"""Operations: a request id on every request (and log line), HTTP latency by route, and
the Prometheus metrics served at /metrics.

Job figures come from the database at scrape time (a custom collector), so every API
process reports the same numbers whichever process or worker ran the jobs; HTTP latency
is per API process (scrape each one, or sum them in PromQL).
"""

from __future__ import annotations

import itertools
import logging
import re
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import logs
from app.db.models import STATUSES, Job, JobStatus, utcnow
from app.db.session import session_scope
from app.settings import Settings

log = logging.getLogger("kd.http")
SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
WAIT_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, 14400)


# request ids: a random per-process prefix and a counter (uuid4 per request cost a
# getrandom() system call on the hot path of every request; bench/api_load.py)
_PROCESS_PREFIX = uuid.uuid4().hex[:16]
_REQUEST_COUNTER = itertools.count(1)


def new_request_id() -> str:
    return f"{_PROCESS_PREFIX}{next(_REQUEST_COUNTER):016x}"  # 32 hex digits, as a uuid4


HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
RECENT_S = 3600  # the histograms cover jobs that ended (or started) in the last hour


class JobCollector(Collector):
    """kd_jobs, kd_queue_depth, kd_job_duration_seconds, kd_job_queue_wait_seconds,
    kd_running_images_per_second: read from the database at most every
    `metrics_cache_s`, however often /metrics is scraped. Every query is indexed: counts
    by status, and only jobs of the last hour for the histograms. No label carries a job
    id or any other value a client chose."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._cached: tuple[float, list[Metric]] | None = None

    def collect(self) -> Iterator[Metric]:
        now = time.monotonic()
        if self._cached is None or now - self._cached[0] >= self.settings.metrics_cache_s:
            self._cached = (now, self._read())
        yield from self._cached[1]

    def _read(self) -> list[Metric]:
        since = utcnow() - timedelta(seconds=RECENT_S)
        with session_scope(self.settings.db_url) as session:
            counts = dict(
                session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
            )
            ended = session.execute(
                select(Job.status, Job.created_at, Job.started_at, Job.finished_at).where(
                    Job.finished_at > since
                )
            ).all()
            running = session.scalars(
                select(Job.progress).where(Job.status == JobStatus.RUNNING)
            ).all()
        jobs = GaugeMetricFamily("kd_jobs", "Jobs by status", labels=["status"])
        for status in STATUSES:
            jobs.add_metric([status], counts.get(status, 0))
        durations = [
            (f - s).total_seconds()
            for st, _, s, f in ended
            if s is not None and f is not None and st == JobStatus.SUCCEEDED
        ]
        waits = [(s - c).total_seconds() for _, c, s, _ in ended if s is not None]
        rates = [
            float(p["images_per_s"])
            for p in running
            if isinstance((p or {}).get("images_per_s"), int | float)
        ]
        return [
            jobs,
            GaugeMetricFamily(
                "kd_queue_depth", "Jobs waiting for a worker", value=counts.get(JobStatus.QUEUED, 0)
            ),
            _histogram(
                "kd_job_duration_seconds",
                "Run time of jobs that succeeded in the last hour",
                durations,
                DURATION_BUCKETS,
            ),
            _histogram(
                "kd_job_queue_wait_seconds",
                "Submission to start, of jobs that ended in the last hour",
                waits,
                WAIT_BUCKETS,
            ),
            GaugeMetricFamily(
                "kd_running_images_per_second",
                "Training throughput of all running jobs together",
                value=sum(rates),
            ),
        ]


def _histogram(
    name: str, doc: str, values: list[float], buckets: tuple[float, ...]
) -> HistogramMetricFamily:
    cumulative = [(str(b), sum(1 for v in values if v <= b)) for b in buckets]
    cumulative.append(("+Inf", len(values)))
    return HistogramMetricFamily(name, doc, buckets=cumulative, sum_value=sum(values))


class Metrics:
    """One registry per application (tests build many apps in one process)."""

    def __init__(self, settings: Settings):
        self.registry = CollectorRegistry()
        self.http_latency = Histogram(
            "kd_http_request_duration_seconds",
            "Time to the response's first byte, by route template",
            ["method", "route", "status"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.registry.register(JobCollector(settings))


class RequestContext:
    """ASGI middleware: X-Request-ID in and out, the id in every log line of the request,
    the latency histogram, and one access-log line."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = given if SAFE_REQUEST_ID.match(given) else new_request_id()
        token = logs.request_id.set(rid)
        start = time.perf_counter()
        seen: dict[str, Any] = {"status": 500}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).append("X-Request-ID", rid)
                seen["status"] = message["status"]
                seen["ttfb"] = time.perf_counter() - start
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            elapsed = seen.get("ttfb", time.perf_counter() - start)
            # labels from fixed sets only: any string a client sends as a method or path
            # would otherwise become a new series, kept for the life of the process
            method = scope["method"] if scope["method"] in HTTP_METHODS else "other"
            self.metrics.http_latency.labels(method, template, str(seen["status"])).observe(elapsed)
            log.info(
                "request",
                extra={
                    "method": scope["method"][:16],
                    "path": scope["path"],
                    "route": template,
                    "status": seen["status"],
                    "ms": round(elapsed * 1000, 2),
                },
            )
            logs.request_id.reset(token)
