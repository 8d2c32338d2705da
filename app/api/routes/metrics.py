"""GET /metrics in Prometheus' text format. Open by default (it names no job or tenant);
with KD_METRICS_TOKEN set it needs `Authorization: Bearer <token>`."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from app.errors import ProblemError

router = APIRouter()


@router.get("/metrics", tags=["health"], response_class=Response)
async def metrics(request: Request) -> Response:
    token = request.app.state.settings.metrics_token
    given = request.headers.get("authorization", "")
    if token and not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        raise ProblemError(
            401,
            "Unauthorized",
            "/metrics needs `Authorization: Bearer <KD_METRICS_TOKEN>`",
            headers={"WWW-Authenticate": 'Bearer realm="kdservice-metrics"'},
        )
    body = await run_in_threadpool(generate_latest, request.app.state.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
