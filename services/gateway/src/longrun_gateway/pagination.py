"""Keyset pagination, newest first, with an opaque cursor: base64 of the last row's (timestamp, id)."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import and_, or_
from sqlmodel import Session
from sqlmodel.sql.expression import SelectOfScalar

from .errors import invalid

T = TypeVar("T")

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
# Row ids are UUIDs; anything outside this alphabet (NUL, control characters) could not be compared in SQL.
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True)
class Cursor:
    """Where the previous page ended."""

    at: datetime
    id: str

    def encode(self) -> str:
        at = self.at if self.at.tzinfo else self.at.replace(tzinfo=UTC)
        raw = json.dumps([at.astimezone(UTC).isoformat(), self.id], separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, value: str) -> Cursor:
        """Parse a cursor this gateway issued; anything else is a 422 naming `cursor`."""
        try:
            raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
            at_text, ident = json.loads(raw)
            at = datetime.fromisoformat(at_text)
            if not isinstance(ident, str) or not _ID.fullmatch(ident):
                raise ValueError("bad id")
            # An offset can move a timestamp past datetime's range (0001-01-01T00:00+14:00): OverflowError.
            at = (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC)
        except (binascii.Error, UnicodeDecodeError, ValueError, TypeError, OverflowError, RecursionError):
            raise invalid("cursor", "invalid cursor; pass the next_cursor of a previous page", value=value) from None
        return cls(at, ident)


def stored_utc(value: datetime, *, naive: bool) -> datetime:
    """`value` as the database stores it: UTC (a time without zone is taken as UTC), naive on SQLite."""
    value = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    return value.replace(tzinfo=None) if naive else value


def page(
    session: Session,
    statement: SelectOfScalar[T],
    at_column: Any,
    id_column: Any,
    limit: int,
    cursor: str | None,
) -> tuple[Sequence[T], str | None]:
    """One page of `statement`, ordered by (at, id) descending, and the cursor of the next page (or None)."""
    if cursor:
        after = Cursor.decode(cursor)
        # Timestamps are stored as UTC (naive on SQLite); compare in the same form.
        at = after.at if session.get_bind().dialect.name != "sqlite" else after.at.replace(tzinfo=None)
        statement = statement.where(or_(at_column < at, and_(at_column == at, id_column < after.id)))
    statement = statement.order_by(at_column.desc(), id_column.desc()).limit(limit + 1)
    rows = list(session.exec(statement).all())
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    last = rows[-1]
    return rows, Cursor(getattr(last, at_column.key), getattr(last, id_column.key)).encode()
