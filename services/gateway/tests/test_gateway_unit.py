"""Pure functions of the gateway: cursors, field paths, args and limit validation, request hashing."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from gateway_support import DEMO_POLICY, DEMO_SCHEMA

from longrun_common.catalog import TaskPolicy
from longrun_common.models import TaskRecord
from longrun_common.settings import Settings
from longrun_gateway.deps import MAX_JSON_DEPTH, parse_json
from longrun_gateway.errors import ApiError, field_path
from longrun_gateway.pagination import Cursor
from longrun_gateway.submission import CatalogTask, JobRequest, check_args, check_idempotency_key, time_limits
from longrun_gateway.uploads import safe_name
from longrun_gateway.views import hub_ws_base, is_uuid

pytestmark = pytest.mark.unit

DEMO = CatalogTask.of(TaskRecord(name="demo.steps", args_schema=DEMO_SCHEMA), DEMO_POLICY)


def task(**fields: Any) -> CatalogTask:
    return CatalogTask.of(TaskRecord(**fields), TaskPolicy())


def problems(exc: pytest.ExceptionInfo[ApiError]) -> list[str]:
    assert exc.value.status_code == 422
    return [f"{p['field']}: {p['message']}" for p in exc.value.details]


def test_cursor_round_trip_and_rejects_garbage() -> None:
    cursor = Cursor(datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC), "abc")
    assert Cursor.decode(cursor.encode()) == cursor
    naive = Cursor(datetime(2026, 1, 2, 3, 4, 5), "x")  # SQLite hands back naive UTC
    assert Cursor.decode(naive.encode()).at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    for bad in ["", "!!!", "bm90IGpzb24", "WzEsMl0", "WyJub3QgYSBkYXRlIiwgImlkIl0"]:
        with pytest.raises(ApiError) as exc:
            Cursor.decode(bad)
        assert problems(exc)[0].startswith("cursor: invalid cursor")


def test_field_path() -> None:
    assert field_path(["steps"], root="args") == "args.steps"
    assert field_path(["rows", 2, "n"], root="args") == "args.rows[2].n"
    assert field_path([]) == "body"
    assert field_path([], root="args") == "args"


def test_args_errors_name_the_field() -> None:
    with pytest.raises(ApiError) as exc:
        check_args(DEMO, {"steps": 0})
    assert problems(exc) == ["args.steps: 0 is less than the minimum of 1"]
    assert exc.value.message == "args.steps: 0 is less than the minimum of 1"
    with pytest.raises(ApiError) as exc:
        check_args(DEMO, {})
    assert problems(exc) == ["args.steps: 'steps' is a required property"]
    with pytest.raises(ApiError) as exc:
        check_args(DEMO, {"steps": "many", "delay": 61, "bogus": 1})
    found = problems(exc)
    assert "args.steps: 'many' is not of type 'integer'" in found
    assert "args.delay: 61 is greater than the maximum of 60" in found
    assert any(p.startswith("args: Additional properties are not allowed ('bogus'") for p in found)
    nested = task(
        name="n",
        args_schema={
            "type": "object",
            "properties": {
                "rows": {
                    "type": "array",
                    "items": {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}},
                }
            },
        },
    )
    with pytest.raises(ApiError) as exc:
        check_args(nested, {"rows": [{"n": 1}, {"n": "x"}, {}]})
    assert problems(exc) == [
        "args.rows[1].n: 'x' is not of type 'integer'",
        "args.rows[2].n: 'n' is a required property",
    ]
    check_args(DEMO, {"steps": 3, "delay": 0.5})  # valid: no exception


def test_args_schema_uses_draft_2020_12() -> None:
    # prefixItems exists only from Draft 2020-12 on; an older validator would ignore it.
    record = task(
        name="t",
        args_schema={
            "type": "object",
            "properties": {"pair": {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}]}},
        },
    )
    with pytest.raises(ApiError) as exc:
        check_args(record, {"pair": ["a", "b"]})
    assert problems(exc) == ["args.pair[0]: 'a' is not of type 'integer'"]


@pytest.mark.parametrize("schema", [{"type": 12}, {"properties": {"x": {"type": "string", "pattern": "("}}}])
def test_broken_catalog_schema_is_a_503_not_a_500(schema: dict[str, Any]) -> None:
    with pytest.raises(ApiError) as exc:
        task(name="bad", args_schema=schema)
    assert exc.value.status_code == 503


def test_time_limits_within_policy() -> None:
    policy = TaskPolicy(soft_time_limit=300, time_limit=600, max_time_limit=3600)
    assert time_limits(JobRequest(task="t"), policy) == (300, 600)
    assert time_limits(JobRequest(task="t", soft_time_limit=10, time_limit=20), policy) == (10, 20)
    assert time_limits(JobRequest(task="t", time_limit=3600), policy) == (300, 3600)
    with pytest.raises(ApiError) as exc:
        time_limits(JobRequest(task="t", time_limit=3601), policy)
    assert problems(exc) == ["time_limit: 3601 is outside the allowed range of 1 to 3600 seconds"]
    # The adversarial run's tiny limits, and every other value outside the range, name the field and range.
    for name in ("time_limit", "soft_time_limit"):
        for value in (0.001, 5e-324, 0.0, -1.0, 0.999, float("nan"), float("inf"), 3600.5):
            with pytest.raises(ApiError) as exc:
                time_limits(JobRequest.model_validate({"task": "t", name: value}), policy)
            assert problems(exc)[0].startswith(f"{name}: "), (name, value)
            assert problems(exc)[0].endswith("is outside the allowed range of 1 to 3600 seconds"), (name, value)
    assert time_limits(JobRequest(task="t", soft_time_limit=1, time_limit=1.5), policy) == (1, 1.5)
    # The ceiling stays below the broker's visibility timeout, whatever the task's policy says.
    with pytest.raises(ApiError) as exc:
        time_limits(JobRequest(task="t", time_limit=3000), policy, visibility_timeout=3000)
    assert problems(exc) == ["time_limit: 3000 is outside the allowed range of 1 to 2940 seconds"]
    with pytest.raises(ApiError) as exc:
        time_limits(JobRequest(task="t", soft_time_limit=700), policy)  # above the policy's hard limit
    assert problems(exc) == ["soft_time_limit: soft_time_limit (700) must be below time_limit (600)"]
    with pytest.raises(ApiError) as exc:
        time_limits(JobRequest(task="t", soft_time_limit=50, time_limit=50), policy)
    assert problems(exc)[0].startswith("soft_time_limit: ")
    assert time_limits(JobRequest(task="t"), TaskPolicy()) == (None, None)


def test_request_digest_is_canonical() -> None:
    a = JobRequest.model_validate(json.loads('{"task": "t", "args": {"x": 1, "y": [1, 2]}}'))
    b = JobRequest.model_validate(json.loads('{"args": {"y": [1, 2], "x": 1}, "task": "t", "priority": 0}'))
    c = JobRequest.model_validate({"task": "t", "args": {"x": 2, "y": [1, 2]}})
    assert a.digest() == b.digest() != c.digest()
    assert JobRequest(task="t").digest() == JobRequest(task="t", args={}).digest()


@pytest.mark.parametrize("key", ["k", "a" * 255, "order-42 retry", "~!@#$%^&*()"])
def test_idempotency_key_accepts_printable(key: str) -> None:
    assert check_idempotency_key(key) == key


@pytest.mark.parametrize("key", ["", "a" * 256, "tab\there", "ключ", "nul\x00"])
def test_idempotency_key_rejects_others(key: str) -> None:
    with pytest.raises(ApiError) as exc:
        check_idempotency_key(key)
    assert problems(exc)[0].startswith("Idempotency-Key: ")


def test_parse_json_strictness() -> None:
    assert parse_json(b'{"a": [1, 2.5, null]}') == {"a": [1, 2.5, None]}
    for raw, expected in [
        (b'{"a": NaN}', "body: invalid JSON: NaN is not valid JSON"),
        (b'{"a": Infinity}', "body: invalid JSON: Infinity is not valid JSON"),
        (b'{"a": 1,}', "body: invalid JSON: "),
        (b'{"a": "\xff"}', "body: must be UTF-8"),
        (b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1), "body: JSON nested deeper than"),
        (b"[" * 100_000 + b"]" * 100_000, "body: JSON nested deeper than"),
    ]:
        with pytest.raises(ApiError) as exc:
            parse_json(raw)
        assert problems(exc)[0].startswith(expected), (raw[:20], problems(exc))
    with pytest.raises(ApiError) as exc:
        parse_json(b'{"a": 1,\n "b": }')
    assert "line 2 column" in exc.value.message


def test_safe_name_strips_paths_and_controls() -> None:
    assert safe_name("../../etc/passwd") == "passwd"
    assert safe_name("C:\\Users\\me\\report.csv") == "report.csv"
    assert safe_name("a\x00b\nc.txt") == "abc.txt"
    assert safe_name("") == "file"
    assert len(safe_name("x" * 1000)) == 255


def test_hub_urls() -> None:
    assert hub_ws_base(Settings(hub_public_url="http://hub:8001/")) == "ws://hub:8001"
    assert hub_ws_base(Settings(hub_public_url="https://hub.example.com")) == "wss://hub.example.com"


def test_is_uuid() -> None:
    assert is_uuid("9b2f7e0e-6a50-4bd5-9d3c-3f0d7a0b7f59")
    for bad in [
        "",
        "1",
        "9b2f7e0e6a504bd59d3c3f0d7a0b7f59",
        "{9b2f7e0e-6a50-4bd5-9d3c-3f0d7a0b7f59}",
        "../etc/passwd",
        "9b2f7e0e-6a50-4bd5-9d3c-3f0d7a0b7f59x",
        "\x00",
    ]:
        assert not is_uuid(bad), bad
