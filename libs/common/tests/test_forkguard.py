"""A fork waits for the other threads' database work (`forkguard.held()`), and the child starts with the lock free.

Without it, a worker's pool process forked while the main process's maintenance thread was inside SQLite hung on
SQLite's allocator mutex at its first query (see forkguard.py)."""

from __future__ import annotations

import os
import threading
import time

import pytest

from longrun_common import forkguard

pytestmark = pytest.mark.unit

HOLD_SECONDS = 0.5


def test_a_fork_waits_for_a_thread_inside_held_and_the_child_can_take_it() -> None:
    forkguard.install()
    forkguard.install()  # idempotent: one handler, or the second `before` would wait for the first forever
    inside, released = threading.Event(), []

    def database_work() -> None:
        with forkguard.held():
            inside.set()
            time.sleep(HOLD_SECONDS)
            released.append(time.monotonic())

    worker = threading.Thread(target=database_work)
    worker.start()
    assert inside.wait(5)
    pid = os.fork()
    if pid == 0:  # the child: the lock must be free here, whatever the parent's threads were doing
        os._exit(0 if forkguard._lock.acquire(timeout=2) else 3)
    forked_at = time.monotonic()
    worker.join(5)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child found the lock still held"
    assert released and forked_at >= released[0], "the fork happened while the thread was inside held()"
    with forkguard.held():  # and the parent's lock is free again
        pass
