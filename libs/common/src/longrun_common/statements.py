"""The SQL statements every attempt of every job runs (take it, end it, apply its end to its workflow), built once.

Building a Core statement and its cache key costs ~0.2 ms of Python (more with a RETURNING of every column),
and an attempt ran six of them on every worker. Built once with bind parameters, each is compiled once per
process and only bound afterwards. The statements with a varying SET clause (`ending`) are built once per
combination of columns set.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from sqlalchemy import ColumnElement, Insert, Update, bindparam, case, func, insert, literal_column, update
from sqlalchemy.sql.elements import BindParameter

from .models import Attempt, Job
from .rows import table_of
from .states import TERMINAL, JobStatus

_TERMINAL = tuple(s.value for s in TERMINAL)
_WAITING = (JobStatus.QUEUED.value, JobStatus.RETRYING.value)


def _param(name: str, column: str, prefix: str = "p_") -> BindParameter[Any]:
    """A bind parameter of the jobs column's type (JSON and timestamps are processed as a literal would be)."""
    return bindparam(f"{prefix}{name}", type_=table_of(Job).c[column].type)


def _status_in(statuses: tuple[str, ...]) -> ColumnElement[bool]:
    """`status IN ('a', 'b')` with the statuses written into the SQL: an IN over bound values is an "expanding"
    parameter, which SQLAlchemy renders into the statement again on every execution (~0.1 ms each, three per step).
    The statuses are this module's own constants, never input."""
    assert all(status.isidentifier() for status in statuses)
    return table_of(Job).c.status.in_([literal_column(f"'{status}'") for status in statuses])


@cache
def take(unless_cancelled: bool) -> Update:
    """A waiting attempt becomes running (`JobStore.begin_attempt`): p_id, p_attempt, p_stamp, p_worker."""
    jobs = table_of(Job)
    statement = update(jobs).where(jobs.c.id == _param("id", "id"), jobs.c.attempt == _param("attempt", "attempt"),
                                   _status_in(_WAITING))
    if unless_cancelled:
        statement = statement.where(jobs.c.cancel_requested_at.is_(None))
    stamp = _param("stamp", "updated_at")
    return statement.values(status=JobStatus.RUNNING.value, updated_at=stamp, worker=_param("worker", "worker"),
                            next_retry_at=None, started_at=func.coalesce(jobs.c.started_at, stamp)).returning(jobs)


@cache
def add_attempt() -> Insert:
    """The attempt's own row: job_id, number, status, worker, started_at."""
    return insert(table_of(Attempt))


@cache
def end(target: str, only_from: tuple[str, ...], columns: tuple[str, ...]) -> Update:
    """The job at p_id / p_attempt, in one of `only_from`, becomes `target` with v_updated_at and a v_<column> for
    each of `columns` (`attempt` among them, for a retry); `seq` only ever grows. Returns the changed row."""
    jobs = table_of(Job)
    values: dict[str, Any] = {name: _param(name, name, "v_") for name in ("updated_at", *columns)}
    if "seq" in values:
        values["seq"] = case((jobs.c.seq < values["seq"], values["seq"]), else_=jobs.c.seq)
    return (update(jobs).where(jobs.c.id == _param("id", "id"), jobs.c.attempt == _param("attempt", "attempt"),
                               _status_in(only_from))
            .values(status=target, **values).returning(jobs))


@cache
def end_attempt() -> Update:
    """The running attempt p_job_id / p_number ends: p_status, p_finished_at, p_error."""
    attempts = table_of(Attempt)
    return (update(attempts).where(attempts.c.job_id == bindparam("p_job_id"),
                                   attempts.c.number == bindparam("p_number"), attempts.c.finished_at.is_(None))
            .values(status=bindparam("p_status"),
                    finished_at=bindparam("p_finished_at", type_=attempts.c.finished_at.type),
                    error=bindparam("p_error", type_=attempts.c.error.type)))


@cache
def settle() -> Update:
    """The ended step p_id is applied to its parent, once (settled false -> true)."""
    jobs = table_of(Job)
    return (update(jobs).where(jobs.c.id == _param("id", "id"), jobs.c.settled.is_(False),
                               _status_in(_TERMINAL)).values(settled=True))


@cache
def count_down() -> Update:
    """The parent p_id has one pending child fewer. Returns the parent's row."""
    jobs = table_of(Job)
    return update(jobs).where(jobs.c.id == _param("id", "id")).values(pending=jobs.c.pending - 1).returning(jobs)
