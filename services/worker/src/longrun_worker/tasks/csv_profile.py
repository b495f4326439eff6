"""`csv.profile`: rows, columns, and per-column type, nulls, min/max and distinct estimate of an uploaded CSV."""

from __future__ import annotations

import csv
import hashlib
import heapq
import io
from dataclasses import dataclass, field
from datetime import date
from typing import Any, BinaryIO

from pydantic import BaseModel, ConfigDict, Field

from ..api import PermanentError, task
from ..context import JobContext

SNIFF_BYTES = 64 * 1024
KMV_SIZE = 256  # k-minimum-values sketch: distinct estimates within a few percent, fixed memory


class ProfileArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file_id: str = Field(min_length=1, max_length=64, description="id returned by POST /v1/files")


class ColumnProfile(BaseModel):
    name: str
    type: str
    nulls: int
    min: Any = None
    max: Any = None
    distinct_estimate: int


class CsvProfile(BaseModel):
    file_id: str
    rows: int
    columns: list[ColumnProfile]
    delimiter: str


@task("csv.profile", args=ProfileArgs, retries=2, soft_time_limit=1800, time_limit=1900)
def profile(ctx: JobContext, args: ProfileArgs) -> CsvProfile:
    """Profile an uploaded CSV file: per-column type, nulls, min/max and distinct count estimate."""
    stored = ctx.file(args.file_id)
    ctx.progress.start(total=stored.size, stage="profiling", message=stored.name)
    with stored.path.open("rb") as raw:
        dialect, has_header = _sniff(raw.read(SNIFF_BYTES))
        raw.seek(0)
        counting = _CountingReader(raw, ctx)
        text = io.TextIOWrapper(io.BufferedReader(counting), encoding="utf-8", newline="")
        try:
            reader = csv.reader(text, dialect)
            first = next(reader, None)
            if first is None:
                raise PermanentError("not a CSV: the file is empty")
            names = first if has_header else [f"column_{i + 1}" for i in range(len(first))]
            columns = [_Column(name) for name in names]
            rows = 0
            if not has_header:
                _add_row(columns, first, 1)
                rows = 1
            for row in reader:
                rows += 1
                if row:
                    _add_row(columns, row, rows + (1 if has_header else 0))
        except (UnicodeDecodeError, csv.Error) as exc:
            raise PermanentError(f"not a CSV: {exc}") from exc
    return CsvProfile(file_id=stored.id, rows=rows, columns=[c.profile() for c in columns],
                      delimiter=dialect.delimiter)


def _sniff(head: bytes) -> tuple[type[csv.Dialect], bool]:
    if b"\x00" in head:
        raise PermanentError("not a CSV: the file is binary (it contains NUL bytes)")
    try:
        sample = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # a multi-byte character cut at the sample's end is fine
            raise PermanentError("not a CSV: the file is not UTF-8 text") from exc
        sample = head[: exc.start].decode("utf-8")
    if not sample.strip():
        raise PermanentError("not a CSV: the file is empty")
    lines = sample.splitlines()
    try:
        dialect = csv.Sniffer().sniff(sample, delimiters=",;\t|")
    except csv.Error:
        if len(lines) >= 1 and all("," not in line for line in lines[:20]) and len(lines) > 1:
            dialect = csv.excel  # a single-column file
        else:
            raise PermanentError("not a CSV: no consistent delimiter found") from None
    try:
        has_header = csv.Sniffer().has_header(sample)
    except csv.Error:
        has_header = True
    return dialect, has_header


class _CountingReader(io.RawIOBase):
    """Reports bytes read as progress."""

    def __init__(self, raw: BinaryIO, ctx: JobContext):
        self._raw, self._ctx = raw, ctx

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._raw.read(len(buffer))
        buffer[: len(data)] = data
        if data:
            self._ctx.progress.advance(len(data))
        return len(data)


def _add_row(columns: list[_Column], row: list[str], line: int) -> None:
    if len(row) != len(columns):
        raise PermanentError(f"not a CSV: line {line} has {len(row)} fields, the header has {len(columns)}")
    for column, value in zip(columns, row, strict=True):
        column.add(value)


_TYPE_ORDER = ["empty", "boolean", "integer", "float", "date", "string"]
_BOOLEANS = {"true", "false", "yes", "no", "t", "f"}


def _kind(value: str) -> tuple[str, Any]:
    lowered = value.lower()
    if lowered in _BOOLEANS:
        return "boolean", lowered in {"true", "yes", "t"}
    try:
        return "integer", int(value)
    except ValueError:
        pass
    try:
        return "float", float(value)
    except ValueError:
        pass
    try:
        return "date", date.fromisoformat(value)
    except ValueError:
        return "string", value


@dataclass
class _Column:
    name: str
    nulls: int = 0
    kind: str = "empty"
    min: Any = None
    max: Any = None
    values_seen: int = 0
    _sketch: list[int] = field(default_factory=list)  # max-heap (negated) of the k smallest hashes
    _members: set[int] = field(default_factory=set)

    def add(self, value: str) -> None:
        value = value.strip()
        if value == "" or value.lower() in {"null", "none", "na", "n/a"}:
            self.nulls += 1
            return
        self.values_seen += 1
        self._observe_distinct(value)
        kind, parsed = _kind(value)
        widened = _widen(self.kind, kind)
        if widened != self.kind:
            if {widened, self.kind} <= {"integer", "float"}:
                pass  # ints compare with floats; keep the bounds
            elif self.kind != "empty":
                self.min = self.max = None  # bounds of another type are not comparable; restart as strings
            self.kind = widened
        comparable = parsed if self.kind == kind or {kind, self.kind} <= {"integer", "float"} else value
        if self.kind == "string":
            comparable = value
        if self.kind == "boolean":
            return
        if self.min is None or comparable < self.min:
            self.min = comparable
        if self.max is None or comparable > self.max:
            self.max = comparable

    def _observe_distinct(self, value: str) -> None:
        hashed = int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "big")
        if hashed in self._members:
            return
        if len(self._sketch) < KMV_SIZE:
            heapq.heappush(self._sketch, -hashed)
            self._members.add(hashed)
        elif hashed < -self._sketch[0]:
            self._members.discard(-heapq.heappushpop(self._sketch, -hashed))
            self._members.add(hashed)

    def distinct_estimate(self) -> int:
        if len(self._sketch) < KMV_SIZE:
            return len(self._sketch)
        kth = -self._sketch[0] / 2**64
        return int((KMV_SIZE - 1) / kth)

    def profile(self) -> ColumnProfile:
        def plain(value: Any) -> Any:
            return value.isoformat() if isinstance(value, date) else value

        return ColumnProfile(name=self.name, type=self.kind, nulls=self.nulls, min=plain(self.min),
                             max=plain(self.max), distinct_estimate=self.distinct_estimate())


def _widen(current: str, new: str) -> str:
    if current == "empty":
        return new
    if current == new:
        return current
    if {current, new} <= {"integer", "float"}:
        return "float"
    return "string"
