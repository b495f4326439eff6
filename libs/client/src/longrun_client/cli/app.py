"""`longrun`: submit and follow jobs, inspect and requeue dead letters, manage tasks, files, keys, workflows.

Configured by `--url`/`--api-key`/`--profile`, else `LONGRUN_URL`/`LONGRUN_API_KEY`/`LONGRUN_PROFILE`, else the
profile file (see `longrun_client.config`). Live bars on a terminal; NDJSON with `--json` or when stdout is not
a terminal.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

import longrun_client.cli.admin as admin
import longrun_client.cli.dead_letters as dead_letters
import longrun_client.cli.jobs as jobs

from ..client import AsyncClient
from ..models import Job
from .common import (
    EXIT_CODES_HELP,
    EXIT_DETACHED,
    EXIT_USAGE,
    JsonFlag,
    Options,
    emit,
    err,
    fail,
    handles_errors,
    options,
    parse_args,
)
from .live import follow_many
from .tables import job_detail

app = typer.Typer(help=f"Longrun from the command line. {EXIT_CODES_HELP}", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
app.add_typer(jobs.app, name="jobs")
app.add_typer(dead_letters.app, name="dlq")
app.add_typer(admin.tasks_app, name="tasks")
app.add_typer(admin.files_app, name="files")
app.add_typer(admin.keys_app, name="keys")
app.add_typer(admin.workflows_app, name="workflows")


@app.callback()
def main_options(
    ctx: typer.Context,
    url: Annotated[str | None, typer.Option(help="gateway URL [env: LONGRUN_URL]")] = None,
    api_key: Annotated[str | None, typer.Option(help="API key [env: LONGRUN_API_KEY]")] = None,
    profile: Annotated[str | None, typer.Option(help="profile in ~/.config/longrun/config.toml")] = None,
    as_json: JsonFlag = False,
) -> None:
    ctx.obj = Options(url, api_key, profile, as_json)


def run_follow(opts: Options, job_ids: list[str], machine: bool) -> int:
    """Follow jobs to their end; Ctrl-C detaches (the jobs keep running) and says how to cancel them."""
    client = opts.client()
    console = Console()

    async def go() -> int:
        async with AsyncClient(**client._kwargs()) as aclient:
            return await follow_many(aclient, job_ids, machine, console)

    try:
        return asyncio.run(go())
    except KeyboardInterrupt:
        err.print("\ndetached: the job keeps running. To cancel it:", highlight=False)
        for job_id in job_ids:
            err.print(f"  longrun jobs cancel {job_id}", highlight=False)
        return EXIT_DETACHED
    finally:
        client.close()


def show_submitted(job: Job, machine: bool) -> None:
    if machine:
        emit(job.raw)
    else:
        Console().print(job_detail(job))


@app.command()
@handles_errors
def submit(
    ctx: typer.Context,
    task: Annotated[str, typer.Argument(help="task name, e.g. demo.steps (see `longrun tasks ls`)")],
    arg: Annotated[list[str] | None, typer.Option("--arg", "-a", help="k=v (v read as JSON when it is JSON)")] = None,
    args_json: Annotated[str | None, typer.Option(help="all args as one JSON object")] = None,
    queue: Annotated[str | None, typer.Option(help="queue (default: the task's)")] = None,
    priority: Annotated[int | None, typer.Option(min=0, max=9, help="0 normal … 9 most urgent")] = None,
    delay: Annotated[float | None, typer.Option(min=0, help="start after this many seconds")] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="default: a fresh one per command")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="follow the job until it ends")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Submit a job; with --follow, show its progress live and exit with how it ended."""
    opts = options(ctx)
    machine = opts.machine(as_json)
    with opts.client() as client:
        job = client.submit(task, parse_args(arg or [], args_json), queue=queue, priority=priority, delay=delay,
                            idempotency_key=idempotency_key)
    if not follow:
        show_submitted(job, machine)
        return
    if machine:
        emit(job.raw)
    else:
        err.print(f"submitted {job.id} ({job.task})", highlight=False)
    raise typer.Exit(run_follow(opts, [job.id], machine))


@app.command()
@handles_errors
def follow(
    ctx: typer.Context,
    job_ids: Annotated[list[str], typer.Argument(help="one or more job ids (a workflow shows as a tree)")],
    as_json: JsonFlag = False,
) -> None:
    """Follow jobs until they end: live bars with stage, message and ETA, or NDJSON events."""
    opts = options(ctx)
    raise typer.Exit(run_follow(opts, job_ids, opts.machine(as_json)))


def load_workflow(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        fail(f"{path}: {exc}", EXIT_USAGE)
    if not isinstance(data, dict):
        fail(f"{path}: expected a JSON object (a workflow node, or {{'spec': node, 'on_failure': …}})", EXIT_USAGE)
    return data if "spec" in data else {"spec": data}


@admin.workflows_app.command("submit")
@handles_errors
def submit_workflow(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="JSON: a node ({task,args}, {chain}, {group}, {chord}) or {spec,…}")],
    on_failure: Annotated[str | None, typer.Option(help="fail_fast or continue")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Submit a workflow (POST /v1/workflows); with --follow, show it as a tree of bars."""
    opts = options(ctx)
    machine = opts.machine(as_json)
    body = load_workflow(file)
    with opts.client() as client:
        job = client.submit_workflow(body["spec"], on_failure=on_failure or body.get("on_failure"))
    if not follow:
        show_submitted(job, machine)
        return
    if machine:
        emit(job.raw)
    raise typer.Exit(run_follow(opts, [job.id], machine))


def main() -> None:
    app()
