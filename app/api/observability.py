"""Operations: a request id on every request (and log line), HTTP latency by route, and
the Prometheus metrics served at /metrics.

Job figures come from the database at scrape time (a custom collector), so every API
process reports the same numbers whichever process or worker ran the jobs; HTTP latency
is per API process (scrape each one, or sum them in PromQL).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import logs
from app.db.models import STATUSES, Job
from app.db.session import session_scope
from app.settings import Settings

log = logging.getLogger("kd.http")
SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
WAIT_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, 14400)


class JobCollector(Collector):
    """kd_jobs, kd_queue_depth, kd_job_duration_seconds, kd_job_queue_wait_seconds,
    kd_job_images_per_second: read from the jobs table on each scrape."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        with session_scope(self.settings.db_url) as session:
            counts = dict(
                session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
            )
            times = session.execute(
                select(Job.status, Job.created_at, Job.started_at, Job.finished_at).where(
                    Job.started_at.is_not(None)
                )
            ).all()
            running = session.execute(
                select(Job.id, Job.name, Job.progress).where(Job.status == "running")
            ).all()
        jobs = GaugeMetricFamily("kd_jobs", "Jobs by status", labels=["status"])
        for status in STATUSES:
            jobs.add_metric([status], counts.get(status, 0))
        yield jobs
        yield GaugeMetricFamily(
            "kd_queue_depth", "Jobs waiting for a worker", value=counts.get("queued", 0)
        )
        durations = [
            (f - s).total_seconds()
            for st, _, s, f in times
            if s is not None and f is not None and st == "succeeded"
        ]
        waits = [(s - c).total_seconds() for _, c, s, _ in times if s is not None]
        yield _histogram(
            "kd_job_duration_seconds", "Run time of succeeded jobs", durations, DURATION_BUCKETS
        )
        yield _histogram(
            "kd_job_queue_wait_seconds", "Time from submission to start", waits, WAIT_BUCKETS
        )
        rate = GaugeMetricFamily(
            "kd_job_images_per_second", "Training throughput of running jobs", labels=["job_id"]
        )
        for job_id, _, progress in running:
            value = (progress or {}).get("images_per_s")
            if isinstance(value, int | float):
                rate.add_metric([job_id], float(value))
        yield rate


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
        rid = given if SAFE_REQUEST_ID.match(given) else uuid.uuid4().hex
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
            self.metrics.http_latency.labels(
                scope["method"], template, str(seen["status"])
            ).observe(elapsed)
            log.info(
                "request",
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "route": template,
                    "status": seen["status"],
                    "ms": round(elapsed * 1000, 2),
                },
            )
            logs.request_id.reset(token)
