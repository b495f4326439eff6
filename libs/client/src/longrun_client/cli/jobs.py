"""`longrun jobs ls|show|cancel`."""

from __future__ import annotations

import itertools
from typing import Annotated

import typer
from rich.console import Console

from .common import JsonFlag, emit, err, handles_errors, list_items, options, with_client
from .tables import job_detail, jobs_table

app = typer.Typer(help="List, inspect and cancel jobs.", no_args_is_help=True)


@app.command("ls")
@handles_errors
def list_jobs(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option(help="queued, running, retrying, succeeded, failed, cancelled")] = None,
    task: Annotated[str | None, typer.Option()] = None,
    limit: Annotated[int, typer.Option(min=1, help="how many, newest first (pages are followed)")] = 20,
    as_json: JsonFlag = False,
) -> None:
    """The tenant's jobs, newest first."""
    list_items(ctx, as_json, lambda client: list(itertools.islice(
        client.iter_jobs(status=status, task=task, page_size=min(limit, 200)), limit)), jobs_table)


@app.command("show")
@handles_errors
def show(ctx: typer.Context, job_id: str, as_json: JsonFlag = False) -> None:
    """One job: status, progress, attempts, args, result or error."""
    machine, job = with_client(ctx, as_json, lambda client: client.get(job_id))
    if machine:
        emit(job.raw)
    else:
        Console().print(job_detail(job))


@app.command("cancel")
@handles_errors
def cancel(ctx: typer.Context, job_ids: list[str], as_json: JsonFlag = False) -> None:
    """Cancel jobs: a queued job never starts, a running one stops at its next progress report."""
    opts = options(ctx)
    with opts.client() as client:
        for job_id in job_ids:
            job = client.cancel(job_id)
            if opts.machine(as_json):
                emit(job.raw if job else {"id": job_id, "cancel_requested": True})
            else:
                err.print(f"cancel requested: {job_id}" + (f" (status {job.status})" if job else ""), highlight=False)
