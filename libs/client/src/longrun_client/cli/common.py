"""What every command shares: the client from the global options, output mode (terminal or NDJSON),
`k=v` arguments, exit statuses, and turning API errors into a clear message and status."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, NoReturn, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from ..client import Client
from ..errors import ApiError, ConnectionFailed, LongrunError

P = ParamSpec("P")
T = TypeVar("T")

# Exit statuses (documented in `longrun --help` and the README).
EXIT_OK = 0  # the command worked; a followed job succeeded
EXIT_FAILED = 1  # a followed job failed (it is now a dead letter)
EXIT_USAGE = 2  # bad command line or configuration
EXIT_API = 3  # the API refused the request (the message says why)
EXIT_CANCELLED = 4  # a followed job was cancelled
EXIT_UNREACHABLE = 5  # the gateway could not be reached
EXIT_DETACHED = 130  # Ctrl-C: stopped following; the job keeps running

EXIT_CODES_HELP = (
    "Exit status: 0 ok / job succeeded, 1 job failed, 2 usage or configuration error, 3 the API refused the "
    "request, 4 job cancelled, 5 gateway unreachable, 130 detached with Ctrl-C (the job keeps running)."
)

err = Console(stderr=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="NDJSON on stdout (the default when not a terminal)")]


@dataclass
class Options:
    url: str | None = None
    api_key: str | None = None
    profile: str | None = None
    json: bool = False  # NDJSON on stdout (also when stdout is not a terminal)

    def client(self) -> Client:
        try:
            return Client(self.url, self.api_key, profile=self.profile)
        except ValueError as exc:
            fail(str(exc), EXIT_USAGE)

    def machine(self, flag: bool = False) -> bool:
        return flag or self.json or not sys.stdout.isatty()


def options(ctx: typer.Context) -> Options:
    found = ctx.find_object(Options)
    return found if found is not None else Options()


def fail(message: str, status: int) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(status)


def handles_errors(command: Callable[P, T]) -> Callable[P, T]:
    """API errors and unreachable servers end the command with a message and a distinct exit status."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return command(*args, **kwargs)
        except ApiError as exc:
            detail = f" ({json.dumps(exc.details)})" if exc.details else ""
            fail(f"{exc.status} {exc.code}: {exc.message}{detail}", EXIT_API)
        except ConnectionFailed as exc:
            fail(f"cannot reach the gateway: {exc}", EXIT_UNREACHABLE)
        except LongrunError as exc:
            fail(str(exc), EXIT_API)

    return wrapper


def parse_args(pairs: Iterable[str], raw_json: str | None) -> dict[str, Any]:
    """`k=v` pairs: v is read as JSON when it is JSON (`steps=20`, `flag=true`, `xs=[1,2]`), else as text."""
    args: dict[str, Any] = {}
    if raw_json:
        try:
            loaded = json.loads(raw_json)
        except ValueError as exc:
            fail(f"--args-json is not valid JSON: {exc}", EXIT_USAGE)
        if not isinstance(loaded, dict):
            fail("--args-json must be a JSON object", EXIT_USAGE)
        args.update(loaded)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"--arg {pair!r}: expected key=value", EXIT_USAGE)
        try:
            args[key] = json.loads(value)
        except ValueError:
            args[key] = value
    return args


def emit(data: Any) -> None:
    """One NDJSON line on stdout."""
    sys.stdout.write(json.dumps(data, separators=(",", ":"), default=str) + "\n")
    sys.stdout.flush()


def with_client(ctx: typer.Context, as_json: bool, fn: Callable[[Client], T]) -> tuple[bool, T]:
    """`fn` run with the client of the global options: whether to print for a machine (NDJSON), and its answer."""
    opts = options(ctx)
    with opts.client() as client:
        return opts.machine(as_json), fn(client)


def list_items(ctx: typer.Context, as_json: bool, fetch: Callable[[Client], Sequence[Any]],
               table: Callable[[Sequence[Any]], Table]) -> None:
    """The whole of a listing command: models as NDJSON lines (their JSON as the API gave it), or one table."""
    machine, items = with_client(ctx, as_json, fetch)
    if machine:
        for item in items:
            emit(item.raw)
    else:
        Console().print(table(items))


def short(job_id: str) -> str:
    return job_id[:8]
