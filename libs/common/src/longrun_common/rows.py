"""A job row as other stores see it: its Redis creation fields and its values for a Core INSERT."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar, cast

from pydantic_core import PydanticUndefined
from sqlalchemy import Table, inspect
from sqlalchemy.engine import Row
from sqlmodel import SQLModel

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
_DEFAULTS: dict[type[Any], tuple[dict[str, Any], dict[str, Callable[[], Any]]]] = {}

Model = TypeVar("Model", bound=SQLModel)


def detached(model: type[Model], **values: Any) -> Model:
    """A new row object, not in any session, built the way the ORM builds a row it loads: the values (and every
    other field's default) straight into its __dict__.

    Why not `model(**values)`: a table model's constructor sets each field through SQLAlchemy's attribute events
    and pydantic's __setattr__, ten times the cost (0.17 ms for a job, once per submit). Table models are not
    validated on construction either way; a row built here is written with a Core INSERT (`row_values`).
    """
    defaults = _DEFAULTS.get(model)
    if defaults is None:
        fields = model.model_fields
        defaults = _DEFAULTS[model] = (
            {name: field.default for name, field in fields.items()
             if field.default_factory is None and field.default is not PydanticUndefined},
            {name: cast("Callable[[], Any]", field.default_factory) for name, field in fields.items()
             if field.default_factory is not None},
        )
    constants, factories = defaults
    row: Model = model._sa_class_manager.new_instance()  # type: ignore[attr-defined]  # SQLModel.__new__ runs
    state = row.__dict__
    state.update(constants)
    for name, factory in factories.items():
        if name not in values:
            state[name] = factory()
    state.update(values)
    object.__setattr__(row, "__pydantic_fields_set__", set(values))
    return row


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
    """A Job from a row of the jobs table (a Core SELECT or RETURNING of every column), built as `detached` builds
    one: the values come typed from the database, so they are not validated again. `Job.model_validate` cost ~30x
    more (pydantic, then every attribute set through the ORM's instrumentation), three times per workflow step on
    every worker."""
    values = row._mapping
    return detached(Job, **{key: values[name] for key, name in _columns(Job)})
