"""Server-Sent Events for a job, read from the database: every event once, in order,
from any `Last-Event-ID`; a comment line as heartbeat; the stream ends after the job's
terminal status event.

All watchers of one job in this API process share one `JobFeed`: a single task polls the
database for new events (woken at once by a Redis pub/sub nudge when a broker is
configured) and keeps them in memory, so N watchers cost one query per poll, not N.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from app import nudge
from app.db.models import TERMINAL, Job
from app.db.session import session_scope
from app.services.job_reads import events_after
from app.settings import Settings

log = logging.getLogger("kd.sse")
HEARTBEAT_S = 15.0
POLL_S = 0.5
BATCH = 500


def _fetch(settings: Settings, job_id: str, after: int) -> tuple[list[tuple[int, str, Any]], str]:
    with session_scope(settings.db_url) as session:
        # status first: a terminal status is committed together with its event, so events
        # read afterwards include it (the other order can miss it and end the stream early)
        job = session.get(Job, job_id)
        status = job.status if job else "deleted"
        session.commit()  # a fresh snapshot for the events query on every database
        rows = events_after(session, job_id, after, BATCH)
        return [(e.seq, e.type, e.data) for e in rows], status


def _is_end(type_: str, data: dict[str, Any]) -> bool:
    return type_ == "status" and data.get("status") in TERMINAL


class JobFeed:
    def __init__(self, settings: Settings, job_id: str):
        self.settings, self.job_id = settings, job_id
        self.events: list[tuple[int, str, Any]] = []
        self.seqs: list[int] = []
        self.done = False
        self.watchers = 0
        # replaced after each change: a watcher waits on the one it saw, never missing a set
        self.changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def _subscribe(self) -> Any:
        if not self.settings.broker_url:
            return None
        try:
            import redis.asyncio as aioredis

            pubsub = aioredis.from_url(self.settings.broker_url, socket_connect_timeout=1).pubsub()
            await pubsub.subscribe(nudge.channel(self.job_id))
            return pubsub
        except Exception:  # no Redis: polling alone still delivers everything
            return None

    async def run(self) -> None:
        pubsub = await self._subscribe()
        try:
            while self.watchers > 0:
                last = self.seqs[-1] if self.seqs else 0
                try:
                    rows, status = await run_in_threadpool(_fetch, self.settings, self.job_id, last)
                except SQLAlchemyError as exc:  # database restarting: try again shortly
                    log.warning("event feed %s: %s", self.job_id, exc)
                    await asyncio.sleep(1.0)
                    continue
                for row in rows:
                    self.events.append(row)
                    self.seqs.append(row[0])
                if status == "deleted" or (status in TERMINAL and not rows):
                    self.done = True
                if rows or self.done:
                    changed, self.changed = self.changed, asyncio.Event()
                    changed.set()
                if self.done:
                    return
                if len(rows) >= BATCH:
                    continue
                if pubsub is not None:
                    try:
                        await pubsub.get_message(ignore_subscribe_messages=True, timeout=POLL_S * 4)
                        continue
                    except Exception:
                        pubsub = None
                await asyncio.sleep(POLL_S)
        finally:
            if pubsub is not None:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()


class EventHub:
    """The feeds of this process, created on first watcher, dropped after the last."""

    def __init__(self) -> None:
        self.feeds: dict[str, JobFeed] = {}

    def join(self, settings: Settings, job_id: str) -> JobFeed:
        feed = self.feeds.get(job_id)
        if feed is None or (feed.task is not None and feed.task.done()):
            feed = self.feeds[job_id] = JobFeed(settings, job_id)
        feed.watchers += 1
        if feed.task is None or feed.task.done():
            feed.task = asyncio.create_task(feed.run())
        return feed

    def leave(self, feed: JobFeed) -> None:
        feed.watchers -= 1
        if feed.watchers <= 0 and self.feeds.get(feed.job_id) is feed:
            del self.feeds[feed.job_id]


async def event_stream(
    request: Request, settings: Settings, job_id: str, after: int
) -> AsyncIterator[str]:
    hub: EventHub = request.app.state.event_hub
    feed = hub.join(settings, job_id)
    try:
        yield "retry: 2000\n\n"
        while True:
            changed = feed.changed  # taken before reading, so no update slips between
            pending = feed.events[bisect.bisect_right(feed.seqs, after) :]
            if not pending and not feed.done:
                try:
                    await asyncio.wait_for(changed.wait(), HEARTBEAT_S)
                except TimeoutError:  # nothing new for a while: a heartbeat
                    if await request.is_disconnected():
                        return
                    yield ": heartbeat\n\n"
                continue
            for seq, type_, data in pending:
                yield f"id: {seq}\nevent: {type_}\ndata: {json.dumps(data)}\n\n"
                after = seq
                if _is_end(type_, data):
                    return
            if feed.done and not pending:
                return
    finally:
        hub.leave(feed)
