"""`python -m longrun_gateway keys create|list|rotate|revoke`: API keys from the server side.

This is how the first admin key comes to exist, and how an operator manages keys of any tenant. It talks to
the database of `LONGRUN_DATABASE_URL` directly (migrating it first), with the gateway's hash settings.
`create` and `rotate` print the new key alone on stdout — once; it is not stored — and what it is on stderr,
so `KEY=$(python -m longrun_gateway keys create …)` works. `-o json` prints JSON instead. Exit status: 0 done,
1 refused (unknown key, invalid value, a key that cannot be rotated), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from longrun_common.apikeys import (
    DEFAULT_GRACE_SECONDS,
    ApiKeyStore,
    KeyConflict,
    KeyNotFound,
    Scope,
    public_view,
)
from longrun_common.db import create_db_engine, migrate
from longrun_common.settings import Settings

CREATED_BY = "cli"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m longrun_gateway keys", description=__doc__.split("\n\n")[0])
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("-o", "--output", choices=["text", "json"], default="text", help="output format")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")

    create = commands.add_parser("create", parents=[output], help="create a key and print it (once)")
    create.add_argument("--tenant", required=True, help="the tenant the key acts for")
    create.add_argument("--name", required=True, help="what uses the key (for people)")
    create.add_argument(
        "--scope",
        dest="scopes",
        action="append",
        choices=[scope.value for scope in Scope],
        help="repeat for several; default: jobs. `admin` manages the tenant's keys through /v1/admin/keys",
    )
    create.add_argument("--expires-in", type=float, metavar="SECONDS", help="lifetime; default: no expiry")

    listing = commands.add_parser("list", parents=[output], help="list keys (never the keys themselves)")
    listing.add_argument("--tenant", help="only this tenant's keys")

    rotate = commands.add_parser("rotate", parents=[output], help="replace a key; the old one works for a grace period")
    rotate.add_argument("id", help="the key's id (the part after `lr_`)")
    rotate.add_argument(
        "--grace", type=float, default=DEFAULT_GRACE_SECONDS, metavar="SECONDS",
        help=f"how long the old key keeps working (default {DEFAULT_GRACE_SECONDS})",
    )
    rotate.add_argument("--expires-in", type=float, metavar="SECONDS", help="default: the old key's lifetime")

    revoke = commands.add_parser("revoke", parents=[output], help="revoke a key now")
    revoke.add_argument("id", help="the key's id (the part after `lr_`)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings()
    migrate(settings)
    engine = create_db_engine(settings)
    store = ApiKeyStore.for_settings(engine, settings)
    try:
        return _run(store, args)
    except KeyNotFound as exc:
        return _fail(f"no API key with id {exc.args[0]!r}")
    except (KeyConflict, ValueError) as exc:
        return _fail(str(exc))
    finally:
        engine.dispose()


def _run(store: ApiKeyStore, args: argparse.Namespace) -> int:
    as_json = args.output == "json"
    if args.command == "create":
        row, key = store.create(
            args.tenant, args.name, args.scopes or [Scope.JOBS.value], expires_in=args.expires_in, created_by=CREATED_BY
        )
        _print_key({**public_view(row), "key": key}, as_json)
    elif args.command == "rotate":
        old, new, key = store.rotate(
            args.id, grace_seconds=args.grace, expires_in=args.expires_in, created_by=CREATED_BY
        )
        _print_key({**public_view(new), "key": key, "replaces": public_view(old)}, as_json)
        if not as_json:
            print(f"the old key {old.id} keeps working until {public_view(old)['grace_until']}", file=sys.stderr)
    elif args.command == "revoke":
        view = public_view(store.revoke(args.id))
        if as_json:
            print(json.dumps(view))
        else:
            print(f"revoked {view['id']} ({view['tenant']}, {view['name']!r}) at {view['revoked_at']}")
    else:
        views = [public_view(row) for row in store.list_keys(args.tenant)]
        if as_json:
            print(json.dumps({"items": views}))
        else:
            _print_table(views)
    return 0


def _print_key(view: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(view))
        return
    print(view["key"])
    print(
        f"created key {view['id']} for tenant {view['tenant']} ({view['name']!r}, scopes {','.join(view['scopes'])}, "
        f"expires {view['expires_at'] or 'never'}); it is shown this once: store it now",
        file=sys.stderr,
    )


def _print_table(views: list[dict[str, Any]]) -> None:
    columns = ["id", "tenant", "name", "scopes", "status", "created_at", "last_used_at", "expires_at"]
    rows = [[_cell(view[column]) for column in columns] for view in views]
    widths = [max([len(column), *(len(row[i]) for row in rows)]) for i, column in enumerate(columns)]
    for row in [columns, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(value)
    return str(value)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1
