"""A Redis pub/sub nudge when a job has new events, so SSE streams wake at once instead of
waiting for their next database poll. Best effort: the database stays the truth."""

from __future__ import annotations

import contextlib
from functools import lru_cache

import redis

CHANNEL = "kd:job:{}"  # the Redis channel of one job's nudges (app.api.sse listens)


def channel(job_id: str) -> str:
    return CHANNEL.format(job_id)


@lru_cache(maxsize=4)
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)


def nudge(broker_url: str, job_id: str) -> None:
    if not broker_url:
        return
    with contextlib.suppress(redis.RedisError):
        _client(broker_url).publish(channel(job_id), "1")
