"""`longrun tasks …`, `longrun files upload`, `longrun keys …` and the `workflows` group."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ..client import Client
from ..models import ApiKey
from .common import EXIT_API, JsonFlag, emit, err, fail, handles_errors, list_items, options, with_client
from .tables import keys_table, schema_table, tasks_table

tasks_app = typer.Typer(help="The task catalog.", no_args_is_help=True)
files_app = typer.Typer(help="Upload files for tasks (tasks take file ids).", no_args_is_help=True)
keys_app = typer.Typer(help="API keys of your tenant (needs a key with the admin scope).", no_args_is_help=True)
workflows_app = typer.Typer(help="Workflows: chains, groups and chords of jobs.", no_args_is_help=True)


@tasks_app.command("ls")
@handles_errors
def list_tasks(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Every task with its arguments."""
    list_items(ctx, as_json, lambda client: client.tasks(), tasks_table)


@tasks_app.command("show")
@handles_errors
def show_task(ctx: typer.Context, name: str, as_json: JsonFlag = False) -> None:
    """A task's arguments (type, default, constraints) and policy."""
    machine, found = with_client(ctx, as_json, lambda client: [t for t in client.tasks() if t.name == name])
    if not found:
        fail(f"no task named {name!r} (see `longrun tasks ls`)", EXIT_API)
    task = found[0]
    if machine:
        emit(task.raw)
        return
    console = Console()
    if task.description:
        console.print(task.description, highlight=False)
    console.print(schema_table(task))
    console.print("policy: " + ", ".join(f"{k}={v}" for k, v in task.policy.items()), highlight=False)


@files_app.command("upload")
@handles_errors
def upload(ctx: typer.Context, paths: list[Path], as_json: JsonFlag = False) -> None:
    """Upload files; prints each file's id (pass it to a task as its file_id)."""
    opts = options(ctx)
    for path in paths:
        if not path.is_file():
            fail(f"{path}: not a readable file", 2)
    with opts.client() as client:
        for path in paths:
            stored = client.upload(path)
            if opts.machine(as_json):
                emit(stored.raw)
            else:
                Console().print(f"{stored.id}  {stored.name}  {stored.size} bytes  sha256 {stored.sha256}",
                                highlight=False)


def _show_key(machine: bool, key: ApiKey) -> None:
    if machine:
        emit(key.raw)
        return
    Console().print(keys_table([key]))
    if key.key:
        err.print("the key (shown this once, store it now):", highlight=False)
        Console().print(key.key, highlight=False, soft_wrap=True)


@keys_app.command("create")
@handles_errors
def create_key(ctx: typer.Context, name: str,
               scope: Annotated[list[str] | None, typer.Option(help="jobs (default) and/or admin")] = None,
               expires_in: Annotated[int | None, typer.Option(min=1, help="seconds; default never")] = None,
               as_json: JsonFlag = False) -> None:
    """Create a key for your tenant; the key is shown once."""
    _show_key(*with_client(ctx, as_json, lambda client: client.create_key(name, scopes=scope, expires_in=expires_in)))


@keys_app.command("ls")
@handles_errors
def list_keys(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Your tenant's keys (never the secrets)."""

    def every_key(client: Client) -> list[ApiKey]:
        keys, cursor = [], None
        while True:
            page = client.list_keys(cursor=cursor)
            keys.extend(page.items)
            if not page.next_cursor:
                return keys
            cursor = page.next_cursor

    list_items(ctx, as_json, every_key, keys_table)


@keys_app.command("show")
@handles_errors
def show_key(ctx: typer.Context, key_id: str, as_json: JsonFlag = False) -> None:
    _show_key(*with_client(ctx, as_json, lambda client: client.get_key(key_id)))


@keys_app.command("rotate")
@handles_errors
def rotate_key(ctx: typer.Context, key_id: str,
               grace_seconds: Annotated[int | None, typer.Option(min=0, help="seconds the old key still works")] = None,
               as_json: JsonFlag = False) -> None:
    """A new key replacing this one; the old one keeps working for the grace period."""
    _show_key(*with_client(ctx, as_json, lambda client: client.rotate_key(key_id, grace_seconds=grace_seconds)))


@keys_app.command("revoke")
@handles_errors
def revoke_key(ctx: typer.Context, key_id: str, as_json: JsonFlag = False) -> None:
    """The key stops working."""
    _show_key(*with_client(ctx, as_json, lambda client: client.revoke_key(key_id)))
