"""Blocking reads off the event loop, in a few threads, one call per key at a time."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any, TypeVar

import anyio

T = TypeVar("T")


class SingleFlight:
    """Runs blocking calls in `threads` threads of its own, not in the 40 of the shared
    threadpool: many threads doing short Python work contend for the GIL with the event
    loop, which then waits a switch interval at a time (bench/api_load.py: the list's
    rate). Callers asking for a key while its call runs share that call's result: cached
    answers expire for every request in flight at once (32 pollers of one job, one API
    key), and without this each would repeat the same query at that moment."""

    def __init__(self, threads: int):
        self._limiter = anyio.CapacityLimiter(threads)
        self._running: dict[Any, asyncio.Future[Any]] = {}

    async def run(self, key: Any, fn: Callable[..., T], *args: Any) -> T:
        running = self._running.get(key)
        if running is not None:
            return await asyncio.shield(running)  # type: ignore[no-any-return]
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._running[key] = future
        try:
            call = functools.partial(fn, *args)
            result = await anyio.to_thread.run_sync(call, limiter=self._limiter)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning if none waits
            raise
        else:
            future.set_result(result)
            return result
        finally:
            del self._running[key]
