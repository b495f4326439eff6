"""csv.profile's pure parts: type inference, bounds, distinct estimates, and CSV detection."""

from __future__ import annotations

import csv

import pytest

from longrun_worker.api import PermanentError
from longrun_worker.tasks.csv_profile import _Column, _sniff

pytestmark = pytest.mark.unit


def column(values: list[str]) -> _Column:
    col = _Column("c")
    for value in values:
        col.add(value)
    return col


def test_types_and_bounds() -> None:
    assert column(["3", "1", "2"]).profile().model_dump() == {
        "name": "c", "type": "integer", "nulls": 0, "min": 1, "max": 3, "distinct_estimate": 3}
    mixed = column(["1", "2.5", "", "NULL"]).profile()
    assert (mixed.type, mixed.min, mixed.max, mixed.nulls) == ("float", 1, 2.5, 2)
    text = column(["b", "10", "a"]).profile()
    assert (text.type, text.min, text.max) == ("string", "10", "b")
    dates = column(["2024-01-02", "2023-12-31"]).profile()
    assert (dates.type, dates.min, dates.max) == ("date", "2023-12-31", "2024-01-02")
    assert column(["true", "no"]).profile().type == "boolean"


def test_distinct_estimate_is_close_for_many_values() -> None:
    estimate = column([str(i % 5000) for i in range(20000)]).distinct_estimate()
    assert 4000 < estimate < 6000


def test_sniff_rejects_binary_and_accepts_semicolons() -> None:
    with pytest.raises(PermanentError, match="binary"):
        _sniff(b"\x89PNG\r\n\x1a\n\x00\x00")
    dialect, header = _sniff(b"name;age\nann;31\nbob;42\n")
    assert dialect.delimiter == ";" and header
    assert _sniff(b"a,b\n1,2\n")[0].delimiter == ","
    assert issubclass(_sniff(b"value\n1\n2\n3\n")[0], csv.Dialect)
