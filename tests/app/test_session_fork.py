"""A fork while another thread holds the engines' lock (Celery's prefork pool starts its
child beside the maintenance and webhook threads): the child must still open sessions."""

from __future__ import annotations

import os
import signal
import threading

from app.db import session
from app.db.session import get_engine


def test_a_child_forked_while_another_thread_held_the_lock_opens_engines(tmp_path):
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with session._ENGINES_LOCK:
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(10)
    threading.Timer(0.3, release.set).start()
    pid = os.fork()  # waits until the holder lets go of the lock (the before-fork hook)
    if pid == 0:  # the child: a lock inherited held would block here until the alarm
        signal.alarm(10)
        get_engine(f"sqlite:///{tmp_path / 'child.db'}")
        os._exit(0)
    holder.join()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0  # -14 (SIGALRM): it deadlocked
    get_engine(f"sqlite:///{tmp_path / 'parent.db'}")  # and the parent's lock is free
