"""`longrun dlq ls|show|requeue|rm`: one dead letter by id, or many by filter."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from ..client import Client
from .common import EXIT_USAGE, JsonFlag, emit, err, fail, handles_errors, list_items, with_client
from .tables import job_detail, letters_table

app = typer.Typer(help="Dead letters: jobs that failed after all their attempts.", no_args_is_help=True)

T = TypeVar("T")

TaskFilter = Annotated[str | None, typer.Option(help="only this task's dead letters")]
ErrorFilter = Annotated[str | None, typer.Option(help="only this error type (e.g. timeout, ValueError)")]
# `requeue` and `rm` act on one dead letter by id, or on every one matching the filters.
LetterId = Annotated[str | None, typer.Argument(help="one dead letter (else give filters or --all)")]
EveryFlag = Annotated[bool, typer.Option("--all", help="every dead letter (no filter)")]
BulkLimit = Annotated[int | None, typer.Option(min=1, max=500, help="bulk: at most this many")]


def _one_or_matching(ctx: typer.Context, as_json: bool, letter_id: str | None, task: str | None,
                     error_type: str | None, everything: bool, limit: int | None, one: Callable[[Client, str], T],
                     matching: Callable[..., T]) -> tuple[bool, T]:
    """`one(client, letter_id)`, or `matching(client, task=, error_type=, limit=)` for the filters; returns
    whether to print for a machine, and the answer."""
    if letter_id and (task or error_type or everything):
        fail("give either a dead letter id or filters, not both", EXIT_USAGE)
    if not letter_id and not (task or error_type or everything):
        fail("give a dead letter id, a filter (--task, --error-type), or --all", EXIT_USAGE)
    if letter_id:
        return with_client(ctx, as_json, lambda client: one(client, letter_id))
    return with_client(ctx, as_json, lambda client: matching(client, task=task, error_type=error_type, limit=limit))


@app.command("ls")
@handles_errors
def list_letters(ctx: typer.Context, task: TaskFilter = None, error_type: ErrorFilter = None,
                 limit: Annotated[int, typer.Option(min=1)] = 20, as_json: JsonFlag = False) -> None:
    """Dead letters, newest failure first."""
    list_items(ctx, as_json, lambda client: list(itertools.islice(
        client.iter_dead_letters(task=task, error_type=error_type, page_size=min(limit, 200)), limit)), letters_table)


@app.command("show")
@handles_errors
def show(ctx: typer.Context, letter_id: str, as_json: JsonFlag = False) -> None:
    """One dead letter: its error with the traceback, and every attempt."""
    machine, letter = with_client(ctx, as_json, lambda client: client.dead_letter(letter_id))
    if machine:
        emit(letter.raw)
        return
    console = Console()
    if letter.job:
        console.print(job_detail(letter.job))
    for attempt in letter.history:
        console.print(f"attempt {attempt.get('attempt')}: {attempt.get('status')} on {attempt.get('worker')} "
                      f"{json.dumps(attempt.get('error')) if attempt.get('error') else ''}", highlight=False)
    if letter.traceback:
        console.print(letter.traceback, highlight=False)


@app.command("requeue")
@handles_errors
def requeue(ctx: typer.Context, letter_id: LetterId = None, task: TaskFilter = None, error_type: ErrorFilter = None,
            everything: EveryFlag = False, limit: BulkLimit = None, as_json: JsonFlag = False) -> None:
    """Run a dead letter's job again (a new attempt), or every dead letter matching the filters."""
    machine, job_ids = _one_or_matching(ctx, as_json, letter_id, task, error_type, everything, limit,
                                        lambda client, one: [client.requeue(one).id], Client.requeue_dead_letters)
    if machine:
        emit({"requeued": job_ids})
    else:
        err.print(f"requeued {len(job_ids)} job(s): {' '.join(job_ids)}", highlight=False)


@app.command("rm")
@handles_errors
def remove(ctx: typer.Context, letter_id: LetterId = None, task: TaskFilter = None, error_type: ErrorFilter = None,
           everything: EveryFlag = False, limit: BulkLimit = None, as_json: JsonFlag = False) -> None:
    """Forget a dead letter (its job stays failed), or every dead letter matching the filters."""

    def delete_one(client: Client, one: str) -> dict[str, Any]:
        client.delete_dead_letter(one)
        return {"deleted": [one]}

    machine, answer = _one_or_matching(ctx, as_json, letter_id, task, error_type, everything, limit, delete_one,
                                       lambda client, **filters: client.delete_dead_letters(**filters) or {})
    if machine:
        emit(answer)
    else:
        err.print(f"deleted: {json.dumps(answer.get('deleted', answer))}", highlight=False)
