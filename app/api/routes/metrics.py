"""GET /metrics in Prometheus' text format (unauthenticated, like /healthz: bind the API
to a private network or filter the path at the proxy if the figures are sensitive)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

router = APIRouter()


@router.get("/metrics", tags=["health"], response_class=Response)
async def metrics(request: Request) -> Response:
    body = await run_in_threadpool(generate_latest, request.app.state.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
