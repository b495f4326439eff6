"""`longrun dlq ls|show|requeue|rm`: one dead letter by id, or many by filter."""

from __future__ import annotations

import itertools
import json
from typing import Annotated

import typer
from rich.console import Console

from .common import EXIT_USAGE, emit, err, fail, handles_errors, options, print_items
from .tables import job_detail, letters_table

app = typer.Typer(help="Dead letters: jobs that failed after all their attempts.", no_args_is_help=True)

TaskFilter = Annotated[str | None, typer.Option(help="only this task's dead letters")]
ErrorFilter = Annotated[str | None, typer.Option(help="only this error type (e.g. timeout, ValueError)")]
JsonFlag = Annotated[bool, typer.Option("--json")]


def _bulk_guard(letter_id: str | None, task: str | None, error_type: str | None, everything: bool) -> None:
    if letter_id and (task or error_type or everything):
        fail("give either a dead letter id or filters, not both", EXIT_USAGE)
    if not letter_id and not (task or error_type or everything):
        fail("give a dead letter id, a filter (--task, --error-type), or --all", EXIT_USAGE)


@app.command("ls")
@handles_errors
def list_letters(ctx: typer.Context, task: TaskFilter = None, error_type: ErrorFilter = None,
                 limit: Annotated[int, typer.Option(min=1)] = 20, as_json: JsonFlag = False) -> None:
    """Dead letters, newest failure first."""
    opts = options(ctx)
    with opts.client() as client:
        found = list(itertools.islice(client.iter_dead_letters(task=task, error_type=error_type,
                                                               page_size=min(limit, 200)), limit))
    print_items(opts.machine(as_json), found, letters_table)


@app.command("show")
@handles_errors
def show(ctx: typer.Context, letter_id: str, as_json: JsonFlag = False) -> None:
    """One dead letter: its error with the traceback, and every attempt."""
    opts = options(ctx)
    with opts.client() as client:
        letter = client.dead_letter(letter_id)
    if opts.machine(as_json):
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
def requeue(ctx: typer.Context, letter_id: Annotated[str | None, typer.Argument()] = None, task: TaskFilter = None,
            error_type: ErrorFilter = None, everything: Annotated[bool, typer.Option("--all")] = False,
            limit: Annotated[int | None, typer.Option(min=1, max=500, help="bulk: at most this many")] = None,
            as_json: JsonFlag = False) -> None:
    """Run a dead letter's job again (a new attempt), or every dead letter matching the filters."""
    _bulk_guard(letter_id, task, error_type, everything)
    opts = options(ctx)
    with opts.client() as client:
        if letter_id:
            job_ids = [client.requeue(letter_id).id]
        else:
            job_ids = client.requeue_dead_letters(task=task, error_type=error_type, limit=limit)
    if opts.machine(as_json):
        emit({"requeued": job_ids})
    else:
        err.print(f"requeued {len(job_ids)} job(s): {' '.join(job_ids)}", highlight=False)


@app.command("rm")
@handles_errors
def remove(ctx: typer.Context, letter_id: Annotated[str | None, typer.Argument()] = None, task: TaskFilter = None,
           error_type: ErrorFilter = None, everything: Annotated[bool, typer.Option("--all")] = False,
           limit: Annotated[int | None, typer.Option(min=1, max=500, help="bulk: at most this many")] = None,
           as_json: JsonFlag = False) -> None:
    """Forget a dead letter (its job stays failed), or every dead letter matching the filters."""
    _bulk_guard(letter_id, task, error_type, everything)
    opts = options(ctx)
    with opts.client() as client:
        if letter_id:
            client.delete_dead_letter(letter_id)
            answer = {"deleted": [letter_id]}
        else:
            answer = client.delete_dead_letters(task=task, error_type=error_type, limit=limit) or {}
    if opts.machine(as_json):
        emit(answer)
    else:
        deleted = answer.get("deleted", answer)
        err.print(f"deleted: {json.dumps(deleted)}", highlight=False)
