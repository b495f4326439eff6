"""A job row as other stores see it: its Redis creation fields and its values for a Core INSERT."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Table, inspect

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
    model = type(row)
    columns = _COLUMNS.get(model)
    if columns is None:  # mapper inspection is slow: once per model
        columns = _COLUMNS[model] = [(attr.key, attr.columns[0].name) for attr in inspect(model).column_attrs]
    return {name: getattr(row, key) for key, name in columns}
