"""Redis calls the worker's consumer loop hands to a thread of their own instead of waiting for them.

The main process's event loop takes each message, hands it to a pool process and acknowledges it, one message
after another, and every round trip it waits for there delays each task behind it: a fan-out's short steps waited
on the loop longer than they ran. Two of those calls need not be waited for:

- refilling a fair queue after a take (`fairshare.received`): coalesced, so a burst of takes costs one dispatcher
  call per queue; the maintenance tick dispatches every queue anyway, should one be lost;
- dropping an acknowledged message's claim (`timeouts.py`): a compare-and-delete, as correct late as early. If the
  process dies before it runs, the claim names a worker that is gone, which the reconciler does not trust.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Hashable

log = logging.getLogger(__name__)

MAX_PENDING = 10_000  # calls waiting while Redis is unreachable; beyond this new ones are dropped (see above)

_cond = threading.Condition()
_pending: dict[Hashable, Callable[[], None]] = {}
_thread_pid = 0  # the process whose off-loop thread is running (a forked child starts its own)


def call_soon(key: Hashable, call: Callable[[], None]) -> None:
    """Run `call` soon on this process's off-loop thread; a call still pending under the same `key` is replaced."""
    global _thread_pid
    with _cond:
        if len(_pending) >= MAX_PENDING and key not in _pending:
            log.warning("off-loop calls are not keeping up (Redis unreachable?): dropping %r", key)
            return
        _pending[key] = call
        if _thread_pid != os.getpid():
            _thread_pid = os.getpid()
            threading.Thread(target=_run, name="longrun-offloop", daemon=True).start()
        _cond.notify()


def _run() -> None:
    while True:
        with _cond:
            while not _pending:
                _cond.wait()
            calls = list(_pending.values())
            _pending.clear()
        for call in calls:
            try:
                call()
            except Exception:  # each call's own repair path covers it (see the module's docstring)
                log.warning("off-loop call failed", exc_info=True)


def _after_fork_in_child() -> None:
    # A lock held by another thread at the fork stays held in the child, and the thread is not there: start over.
    global _cond
    _cond = threading.Condition()
    _pending.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
