"""Rich tables for jobs, dead letters, tasks and keys (terminal output; NDJSON bypasses them)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from rich.table import Table

from ..models import ApiKey, DeadLetter, Job, TaskInfo


def _percent(job: Job) -> str:
    p = job.progress.percent
    return "" if p is None else f"{p:.0f}%"


def jobs_table(jobs: Iterable[Job]) -> Table:
    table = Table("id", "task", "status", "progress", "stage", "message", "attempt", "created")
    for job in jobs:
        table.add_row(job.id, job.task, job.status, _percent(job), job.progress.stage or "",
                      _error_text(job.error) or job.progress.message or "",
                      f"{job.attempt}/{job.max_attempts or '?'}", (job.created_at or "")[:19])
    return table


def job_detail(job: Job) -> Table:
    table = Table("field", "value", show_header=False)
    rows: list[tuple[str, Any]] = [
        ("id", job.id), ("task", job.task), ("status", job.status), ("queue", job.queue),
        ("priority", job.priority), ("progress", _percent(job)), ("stage", job.progress.stage),
        ("message", job.progress.message), ("eta (s)", job.progress.eta_seconds), ("meta", job.progress.meta),
        ("seq", job.seq), ("attempt", f"{job.attempt}/{job.max_attempts}"), ("args", job.args),
        ("result", job.result), ("error", job.error), ("parent", job.parent_id), ("root", job.root_id),
        ("created", job.created_at), ("started", job.started_at), ("finished", job.finished_at),
    ]
    for name, value in rows:
        if value is not None and value != "":
            table.add_row(name, value if isinstance(value, str) else json.dumps(value, default=str))
    return table


def _error_text(error: dict[str, Any] | None) -> str:
    return f"{error.get('type')}: {error.get('message')}" if error else ""


def letters_table(letters: Iterable[DeadLetter]) -> Table:
    table = Table("id", "job", "task", "error", "attempts", "failed at")
    for letter in letters:
        table.add_row(letter.id, letter.job_id, letter.task, _error_text(letter.error), str(letter.attempts),
                      (letter.failed_at or "")[:19])
    return table


def tasks_table(tasks: Iterable[TaskInfo]) -> Table:
    table = Table("task", "description", "arguments")
    for task in tasks:
        props = task.args_schema.get("properties", {})
        table.add_row(task.name, task.description or "", ", ".join(props))
    return table


def schema_table(task: TaskInfo) -> Table:
    """A task's args schema as a table: one row per argument, with its type, default and constraints."""
    schema = task.args_schema
    required = set(schema.get("required", []))
    table = Table("argument", "type", "required", "default", "constraints", "description", title=task.name)
    skip = {"type", "description", "default", "title"}
    for name, prop in schema.get("properties", {}).items():
        kind = prop.get("type") or " | ".join(str(p.get("type", p.get("$ref", "?"))) for p in prop.get("anyOf", []))
        constraints = ", ".join(f"{k}={v}" for k, v in prop.items() if k not in skip and k != "anyOf")
        default = json.dumps(prop["default"]) if "default" in prop else ""
        table.add_row(name, str(kind), "yes" if name in required else "", default, constraints,
                      prop.get("description", ""))
    return table


def keys_table(keys: Iterable[ApiKey]) -> Table:
    table = Table("id", "name", "scopes", "status", "prefix", "created", "expires", "last used")
    for key in keys:
        table.add_row(key.id, key.name, ",".join(key.scopes), key.status or "", key.prefix or "",
                      (key.created_at or "")[:19], (key.expires_at or "")[:19], (key.last_used_at or "")[:19])
    return table
