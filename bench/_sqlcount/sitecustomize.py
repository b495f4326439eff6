"""Counts the SQL statements of a benchmark's Longrun processes (put on PYTHONPATH by bench/workflow_fanout.py).

Python imports `sitecustomize` at start-up, before the service's code: this registers one SQLAlchemy listener
for every engine, counting each statement executed. Each process (a forked pool process too) keeps its count
in its own small memory-mapped file under $BENCH_SQL_COUNT_DIR, written on every statement, so the benchmark can
sum the files at any moment: Celery's pool processes end with os._exit, so an exit hook would lose their counts.
"""

from __future__ import annotations

import mmap
import os
import struct

_DIR = os.environ.get("BENCH_SQL_COUNT_DIR")
_SLOT = struct.Struct("<q")
_state: dict[str, object] = {"pid": None, "map": None, "count": 0}


def _counter() -> mmap.mmap:
    if _state["pid"] != os.getpid():  # a new process, or a fork of one: its own file, from zero
        path = os.path.join(str(_DIR), f"{os.getpid()}.count")
        with open(path, "w+b") as handle:
            handle.write(b"\0" * _SLOT.size)
            handle.flush()
            _state["map"] = mmap.mmap(handle.fileno(), _SLOT.size)
        _state["pid"], _state["count"] = os.getpid(), 0
    counter = _state["map"]
    assert isinstance(counter, mmap.mmap)
    return counter


def _count(*_: object) -> None:
    counter = _counter()
    count = int(_state["count"]) + 1  # type: ignore[call-overload]
    _state["count"] = count
    _SLOT.pack_into(counter, 0, count)


if _DIR:
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    event.listen(Engine, "before_cursor_execute", _count)


def total(directory: str) -> int:
    """Every statement counted so far under `directory` (by all the processes)."""
    counted = 0
    for name in os.listdir(directory):
        with open(os.path.join(directory, name), "rb") as handle:
            data = handle.read(_SLOT.size)
        if len(data) == _SLOT.size:
            counted += _SLOT.unpack(data)[0]
    return counted
