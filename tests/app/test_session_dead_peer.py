"""PostgreSQL connections give a silent peer up from both ends (app.db.session): what a
session sees, on the real server. The cut-off host itself: tests/faults/test_multi_host.py."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from app.db.session import DEAD_PEER_S, get_engine
from tests.app.conftest import create_pg_database, drop_pg_database

pytestmark = pytest.mark.integration


def test_the_server_end_of_a_connection_keeps_the_urls_options_and_adds_the_timeouts():
    name = create_pg_database()
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}?options=-c%20search_path%3Dkd_x"
    engine = get_engine(url)
    try:
        with engine.connect() as c:
            shown = {
                k: c.execute(text(f"SHOW {k}")).scalar()
                for k in ("search_path", "tcp_keepalives_idle", "tcp_user_timeout")
            }
    finally:
        engine.dispose()
        drop_pg_database(name)
    assert shown["search_path"] == "kd_x"  # the URL's own option, not replaced
    assert shown["tcp_keepalives_idle"] == str(DEAD_PEER_S // 2)  # not the system's 7200
    assert shown["tcp_user_timeout"] == str(DEAD_PEER_S * 1000)


def test_a_unix_socket_url_still_connects_where_tcp_timeouts_mean_nothing():
    """A socket URL (a database on the same host): the server ignores the tcp_... settings
    there, and must not refuse them."""
    engine = get_engine("postgresql+psycopg://postgres@/test?host=/var/run/postgresql")
    try:
        with engine.connect() as c:
            assert c.execute(text("SHOW tcp_keepalives_idle")).scalar() == "0"
    finally:
        engine.dispose()
