"""Server-Sent Events for a job, read from the database: every event once, in order,
from any `Last-Event-ID`; a comment line as heartbeat; the stream ends after the job's
terminal status event. With a broker configured, a Redis pub/sub nudge wakes the loop as
soon as a worker commits new events; otherwise it polls."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from app.db.models import TERMINAL, Job
from app.db.session import session_scope
from app.services.jobs import events_after
from app.settings import Settings

HEARTBEAT_S = 15.0
POLL_S = 0.5


def _fetch(settings: Settings, job_id: str, after: int) -> tuple[list[tuple[int, str, Any]], str]:
    with session_scope(settings.db_url) as session:
        rows = events_after(session, job_id, after, 500)
        job = session.get(Job, job_id)
        status = job.status if job else "deleted"
        return [(e.seq, e.type, e.data) for e in rows], status


async def _waiter(settings: Settings, job_id: str) -> Any:
    if not settings.broker_url:
        return None
    try:
        import redis.asyncio as aioredis

        client = aioredis.from_url(settings.broker_url, socket_connect_timeout=1)
        pubsub = client.pubsub()
        await pubsub.subscribe(f"kd:job:{job_id}")
        return pubsub
    except Exception:  # no Redis: fall back to polling
        return None


async def event_stream(
    request: Request, settings: Settings, job_id: str, after: int
) -> AsyncIterator[str]:
    pubsub = await _waiter(settings, job_id)
    last_sent = time.monotonic()
    yield "retry: 2000\n\n"
    try:
        while True:
            events, status = await run_in_threadpool(_fetch, settings, job_id, after)
            for seq, type_, data in events:
                yield f"id: {seq}\nevent: {type_}\ndata: {json.dumps(data)}\n\n"
                after = seq
                last_sent = time.monotonic()
                if type_ == "status" and data.get("status") in TERMINAL:
                    return
            if status == "deleted" or (status in TERMINAL and not events):
                return
            if await request.is_disconnected():
                return
            if time.monotonic() - last_sent >= HEARTBEAT_S:
                yield ": heartbeat\n\n"
                last_sent = time.monotonic()
            if len(events) >= 500:
                continue
            if pubsub is not None:
                try:
                    await pubsub.get_message(ignore_subscribe_messages=True, timeout=POLL_S * 4)
                except Exception:
                    await asyncio.sleep(POLL_S)
            else:
                await asyncio.sleep(POLL_S)
    finally:
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
