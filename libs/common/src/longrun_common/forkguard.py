"""One lock between a process's forks and its other threads' database work.

SQLite's library mutexes (its allocator's among them) are not reset in a forked child. A child forked while
another thread of its parent was inside SQLite holds that mutex locked forever and hangs at its first query.
Seen: a worker's pool process, forked to replace one that reached max-tasks-per-child while the main process's
maintenance thread was mid-query, hung in `sqlite3Malloc` with a job it had taken; the job stayed `queued` until
the hard time limit. The worker's main process forks its pool processes, so its threads that use the database
(maintenance, presence, drain, timeout recording) do that work under `held()`, and `install()` makes every fork
of the process wait until no such thread is inside it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_installed = False


def install() -> None:
    """From now on a fork of this process waits for `held()` sections to end (idempotent)."""
    global _installed
    if not _installed:
        # The forking thread takes the lock; both sides release it (the child's copy is held by that thread).
        os.register_at_fork(before=_lock.acquire, after_in_parent=_lock.release, after_in_child=_lock.release)
        _installed = True


@contextmanager
def held() -> Iterator[None]:
    """Database work of a thread that is not the forking one (uncontended unless a fork is under way)."""
    with _lock:
        yield
