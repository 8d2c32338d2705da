"""The FastAPI application: `create_app(settings, background)` wires routes, middleware
and errors; `kd serve` (kdservice.cli.server) passes in the loops that run beside it
and runs it under uvicorn."""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Protocol

from fastapi import FastAPI

import kdcore
from app.api import problems
from app.api.guards import BodyLimit, SecurityHeaders
from app.api.job_reads import JobReads
from app.api.observability import Metrics, RequestContext
from app.api.routes import (
    architectures,
    artifacts,
    credentials,
    files,
    jobs,
    meta,
    metrics,
    uploads,
)
from app.api.sse import EventHub
from app.prepare import prepare
from app.services import webhooks
from app.settings import Settings, get_settings
from app.web import mount_dashboard

log = logging.getLogger("kd.api")


def settle_heap() -> None:
    """Import what requests will (job validation loads torch) and move everything alive
    into the collector's permanent generation. A full collection of the 340,000 objects
    torch and the app make took 70-160 ms here, a stall every request in flight waited
    for (bench/api_load.py: /healthz p99/p50); frozen, they are never scanned again.
    torchvision is not among them: it loads (about 1.8 s, once) with the first request
    that names one of its models or lists the architectures (kdcore.registry.defer),
    which a service whose jobs use our own models never pays."""
    import kdcore.checks.validate  # noqa: F401

    gc.collect()
    gc.freeze()


class Background(Protocol):
    """A loop that runs beside the API (the local executor, maintenance, the webhook
    dispatcher): started with the app, told to stop with it."""

    stop: threading.Event

    def start(self) -> Background: ...


def create_app(
    settings: Settings | None = None,
    background: Callable[[Settings], Sequence[Background]] | None = None,
) -> FastAPI:
    """The API. `background` builds the loops to run beside it (the composition root,
    `kd serve`, passes them in: app never imports worker); tests pass none."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        prepare(settings)
        running = [loop.start() for loop in (background(settings) if background else ())]
        if background is not None:  # a served process (`kd serve`), not a test's app
            settle_heap()
        yield
        for loop in running:
            loop.stop.set()
        webhooks.wake()

    app = FastAPI(
        title="kdservice",
        version=kdcore.__version__,
        lifespan=lifespan,
        # /docs is served from local files (app.web); ReDoc would load a third-party script
        docs_url=None,
        redoc_url=None,
        description="Knowledge distillation as a service. Errors are RFC 9457 "
        "problem JSON; authenticate with `Authorization: Bearer <api key>`.",
    )
    app.state.settings = settings
    app.state.job_reads = JobReads(settings)
    app.state.event_hub = EventHub()
    app.state.metrics = Metrics(settings)
    # outermost last: security headers on every answer, the body cap before anything
    # reads a body (uploads have their own cap), the request context around the routes
    app.add_middleware(RequestContext, metrics=app.state.metrics)
    app.add_middleware(
        BodyLimit,
        max_bytes=settings.max_json_body_bytes,
        exempt=(("POST", "/v1/files"),),
        exempt_prefixes=(("PUT", "/v1/uploads/"),),  # parts: capped at their exact size
    )
    app.add_middleware(SecurityHeaders)
    problems.install(app)
    for module in (meta, metrics, files, uploads, credentials, jobs, artifacts, architectures):
        app.include_router(module.router)
    mount_dashboard(app)
    return app
