"""A job row as other stores see it: its Redis creation fields and its values for a Core INSERT."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Table, inspect
from sqlalchemy.engine import Row
from sqlalchemy.orm.instrumentation import manager_of_class

from .models import Job


def epoch(value: datetime | None) -> str:
    return repr(value.timestamp()) if value else ""


def creation_fields(job: Job) -> dict[str, str]:
    """Hash fields set once per job so the hub can describe it without SQL (and a step's parent, for the
    progress roll-up)."""
    fields = {
        "tenant": job.tenant,
        "task": job.task,
        "queue": job.queue,
        "priority": str(job.priority),
        "max_attempts": str(job.max_attempts),
        "created_at": epoch(job.created_at),
    }
    if job.parent_id:
        fields["parent"] = job.parent_id
    return fields


_COLUMNS: dict[type[Any], list[tuple[str, str]]] = {}


def table_of(model: type[Any]) -> Table:
    table: Table = model.__table__
    return table


def row_values(row: Any) -> dict[str, Any]:
    """A model instance's column values, keyed by column name (for a Core INSERT of that row)."""
    return {name: getattr(row, key) for key, name in _columns(type(row))}


def _columns(model: type[Any]) -> list[tuple[str, str]]:
    """The model's (attribute, column name) pairs; mapper inspection is slow: once per model."""
    columns = _COLUMNS.get(model)
    if columns is None:
        columns = _COLUMNS[model] = [(attr.key, attr.columns[0].name) for attr in inspect(model).column_attrs]
    return columns


def job_of(row: Row[Any]) -> Job:
    """A Job from a row of the jobs table (a Core SELECT or RETURNING of every column), built the way the ORM
    builds one it loads: the values come typed from the database, so they are not validated again.
    `Job.model_validate` cost ~30x more (pydantic, then every attribute set through the ORM's instrumentation),
    three times per workflow step on every worker."""
    values = row._mapping
    job: Job = manager_of_class(Job).new_instance()  # SQLModel's __new__ sets pydantic's own slots
    job.__dict__.update({key: values[name] for key, name in _columns(Job)})
    return job
