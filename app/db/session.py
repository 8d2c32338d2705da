"""Engine and session factory, one per process (cached on the database URL)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker

_ENGINES: dict[str, Engine] = {}
_ENGINES_LOCK = threading.Lock()


def _forget_inherited_connections() -> None:
    """In a forked child (Celery's prefork pool), the pooled connections are the parent's
    sockets: using them from both processes corrupts the protocol. Drop them from the
    child's pools without closing them, so the parent keeps working (SQLAlchemy's
    recipe for multiprocessing). The engines' lock starts afresh: the parent held it
    across the fork (below), and in the child no thread would ever release it."""
    global _ENGINES_LOCK
    _ENGINES_LOCK = threading.Lock()
    for engine in _ENGINES.values():
        engine.dispose(close=False)


# the parent's other threads (maintenance, webhooks) open engines too: fork only between
# their uses of the lock, never while one holds it (a child would wait on it forever)
os.register_at_fork(
    before=lambda: _ENGINES_LOCK.acquire(),
    after_in_parent=lambda: _ENGINES_LOCK.release(),
    after_in_child=_forget_inherited_connections,
)


def get_engine(url: str) -> Engine:
    with _ENGINES_LOCK:
        engine = _ENGINES.get(url)
        if engine is None:
            engine = _ENGINES[url] = _create_engine(url)
        return engine


def _create_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # a pool as large as the API's threadpool uses at once: a connection over the
        # pool's size is opened (and its pragmas run) and closed per request
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=20,
            max_overflow=20,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            # WAL lets the API read while the executor writes; the busy timeout makes
            # concurrent writers wait instead of failing with "database is locked"
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return create_engine(
        url, pool_pre_ping=True, pool_size=10, max_overflow=20, connect_args=_dead_peer_args(url)
    )


# A peer that stops answering (a host cut off the network, a pulled cable) is given up
# after about this long, from both ends of each PostgreSQL connection. Without it the
# server keeps a vanished client's open transaction, and its row locks, until the
# system's TCP keepalive (two hours): a gang member cut off inside its heartbeat held
# the job's row, and the surviving hosts' heartbeats waited on it without end.
DEAD_PEER_S = 4


def _dead_peer_args(url: str) -> dict[str, object]:
    """libpq's keepalives for our end, and the same as session settings (named tcp_...,
    user-settable: no server configuration needed) for the server's end, after any
    `options` the URL gives. Only the kernel answers keepalives: a busy but living
    process is never taken for dead."""
    timing = {
        "keepalives_idle": DEAD_PEER_S // 2,
        "keepalives_interval": 1,
        "keepalives_count": DEAD_PEER_S // 2,
        "tcp_user_timeout": DEAD_PEER_S * 1000,  # ms that sent data may stay unacknowledged
    }
    given = make_url(url).query.get("options")
    server = [f"-c {k if k.startswith('tcp_') else 'tcp_' + k}={v}" for k, v in timing.items()]
    options = [*([given] if isinstance(given, str) else given or []), *server]
    return {"keepalives": 1, **timing, "options": " ".join(options)}


@lru_cache(maxsize=8)
def get_sessionmaker(url: str) -> sessionmaker[Session]:
    return sessionmaker(get_engine(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = get_sessionmaker(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
