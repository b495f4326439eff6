"""`follow` for the CLI: live bars for one or several jobs (a workflow as a tree), or NDJSON events.

Each job is followed with `AsyncClient.follow()` (WebSocket, resuming after disconnects; SSE and long-poll as
fallbacks). The exit status is the worst outcome among the followed jobs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from ..client import AsyncClient
from ..models import Event, Job
from .common import EXIT_CANCELLED, EXIT_FAILED, EXIT_OK, emit, short

_STATUS_STYLE = {"succeeded": "green", "failed": "red", "cancelled": "yellow", "retrying": "magenta",
                 "running": "cyan", "queued": "dim"}


def outcome(statuses: Sequence[str | None]) -> int:
    if "failed" in statuses:
        return EXIT_FAILED
    if "cancelled" in statuses:
        return EXIT_CANCELLED
    return EXIT_OK


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds + 0.5)
    return f"eta {seconds // 60}:{seconds % 60:02d}"


@dataclass
class Row:
    bar: TaskID
    label: str
    status: str | None = None
    depth: int = 0


@dataclass
class Board:
    """The bars on screen: one row per job, children indented under their workflow."""

    progress: Progress
    rows: dict[str, Row] = field(default_factory=dict)

    def add(self, job: Job, depth: int = 0) -> None:
        indent = "  " * depth + ("└ " if depth else "")
        label = f"{indent}{short(job.id)} {job.task}"
        bar = self.progress.add_task(label, total=100, status="", stage="", message="", eta="")
        self.rows[job.id] = Row(bar, label, depth=depth)
        self.show(job.id, job.status, job.progress.percent, job.progress.stage, job.progress.message,
                  job.progress.eta_seconds, job.error)

    def show(self, job_id: str, status: str | None, percent: float | None, stage: str | None = None,
             message: str | None = None, eta: float | None = None, error: dict[str, object] | None = None) -> None:
        row = self.rows.get(job_id)
        if row is None:
            return
        row.status = status or row.status
        style = _STATUS_STYLE.get(row.status or "", "white")
        if error and row.status in ("failed", "retrying"):
            message = f"{error.get('type')}: {error.get('message')}"
        fields: dict[str, Any] = {"status": f"[{style}]{row.status or ''}[/]"}
        if stage is not None:
            fields["stage"] = stage
        if message is not None:
            fields["message"] = message
        fields["eta"] = _eta(eta) if row.status == "running" else ""
        completed = percent if percent is not None else None
        if row.status == "succeeded":
            completed = 100.0
        self.progress.update(row.bar, completed=completed, **fields)

    def apply(self, event: Event) -> None:
        p = event.progress
        self.show(event.job_id, event.status, p.percent, p.stage, p.message, p.eta_seconds, event.error)
        if event.child:  # a workflow's event names the child that moved
            child = event.child
            self.show(str(child.get("id")), child.get("status"), child.get("percent"))


def make_progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(bar_width=30),
        TextColumn("{task.percentage:>5.1f}%"),
        TextColumn("{task.fields[status]}"),
        TextColumn("[blue]{task.fields[stage]}[/]"),
        TextColumn("{task.fields[message]}"),
        TextColumn("[dim]{task.fields[eta]}[/]"),
        console=console,
        refresh_per_second=8,
    )


def ndjson(event: Event) -> dict[str, Any]:
    """An event as one NDJSON line: the hub's frame; snapshots (any transport) as the job with its status."""
    if event.type != "snapshot":
        return event.raw
    job = event.job.raw if event.job else None
    return {"type": "snapshot", "job_id": event.job_id, "seq": event.seq, "status": event.status, "job": job}


async def _tree(client: AsyncClient, board: Board, job: Job, depth: int) -> None:
    board.add(job, depth)
    if job.kind != "workflow":
        return
    cursor: str | None = None
    while True:
        page = await client.children(job.id, cursor=cursor)
        for child in page.items:
            await _tree(client, board, child, depth + 1)
        if not page.next_cursor:
            return
        cursor = page.next_cursor


async def follow_many(client: AsyncClient, job_ids: Sequence[str], machine: bool, console: Console) -> int:
    """Follow every job to its end; returns the exit status for the worst outcome."""
    final: dict[str, str | None] = {}

    async def one(job_id: str, board: Board | None) -> None:
        async for event in client.follow(job_id):
            if board is None:
                emit(ndjson(event))
            else:
                board.apply(event)
            final[job_id] = event.status

    if machine:
        await asyncio.gather(*(one(job_id, None) for job_id in job_ids))
    else:
        with make_progress(console) as progress:
            board = Board(progress)
            for job_id in job_ids:
                await _tree(client, board, await client.get(job_id), 0)
            await asyncio.gather(*(one(job_id, board) for job_id in job_ids))
    return outcome([final.get(job_id) for job_id in job_ids])
