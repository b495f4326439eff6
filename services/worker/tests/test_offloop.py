"""The worker main process's off-loop thread (longrun_worker.offloop): calls run off the caller's thread, a call
still pending under the same key is replaced, and a failing call does not stop the ones after it."""

from __future__ import annotations

import os
import threading
import time

from longrun_worker import offloop


def _wait(event: threading.Event) -> None:
    assert event.wait(10), "the off-loop thread never ran the call"


def test_calls_run_on_a_thread_of_their_own() -> None:
    ran = threading.Event()
    threads: list[str] = []

    def call() -> None:
        threads.append(threading.current_thread().name)
        ran.set()

    offloop.call_soon(("test", "thread"), call)
    _wait(ran)
    assert threads == ["longrun-offloop"]


def test_a_pending_call_under_the_same_key_is_replaced_and_a_failure_stops_nothing() -> None:
    gate, done = threading.Event(), threading.Event()
    ran: list[str] = []
    offloop.call_soon(("test", "gate"), gate.wait)  # holds the thread while the next calls queue up
    time.sleep(0.1)

    def fail() -> None:
        raise RuntimeError("Redis said no")

    offloop.call_soon(("test", "refill"), lambda: ran.append("first"))
    offloop.call_soon(("test", "refill"), lambda: ran.append("second"))  # replaces the first: coalesced
    offloop.call_soon(("test", "boom"), fail)
    offloop.call_soon(("test", "after"), lambda: (ran.append("after"), done.set()))
    gate.set()
    _wait(done)
    assert ran == ["second", "after"]


def test_a_forked_child_gets_a_thread_of_its_own() -> None:
    offloop.call_soon(("test", "parent"), lambda: None)  # the parent's thread exists before the fork
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its call must run although the parent's thread did not survive the fork
        ran = threading.Event()
        offloop.call_soon(("test", "child"), ran.set)
        os.write(write, b"1" if ran.wait(10) else b"0")
        os._exit(0)
    os.close(write)
    try:
        assert os.read(read, 1) == b"1"
    finally:
        os.close(read)
        os.waitpid(pid, 0)
