"""The client's pure parts: the follow cursor, error parsing, `k=v` arguments, profiles."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import typer

from longrun_client import Config, NotFound, RateLimited
from longrun_client.cli.common import parse_args
from longrun_client.errors import from_response
from longrun_client.follow import _Cursor

pytestmark = pytest.mark.unit


def frame(seq: int, status: str = "running", kind: str = "progress") -> dict[str, object]:
    return {"type": kind, "job_id": "j", "seq": seq, "status": status, "progress": {"percent": seq}}


def test_cursor_delivers_each_seq_once_and_stops_at_the_end() -> None:
    cursor = _Cursor(since=None)
    snapshot = {"type": "snapshot", "job_id": "j", "seq": 3,
                "job": {"id": "j", "task": "t", "status": "running", "seq": 3}}
    delivered = [cursor.accept(f, "ws") for f in (snapshot, frame(2), frame(3), frame(4), frame(4), frame(5))]
    assert [e.seq for e in delivered if e] == [3, 4, 5]  # the replay's overlap (2, 3, the second 4) is dropped
    assert not cursor.done
    assert cursor.accept(frame(6, "retrying", "status"), "ws") and not cursor.done
    assert cursor.accept(frame(7, "succeeded", "status"), "ws") and cursor.done


def test_cursor_end_frame_and_error_frame() -> None:
    cursor = _Cursor(since=9)
    assert cursor.accept({"type": "end", "job_id": "j", "seq": 9}, "ws") is None and cursor.done
    with pytest.raises(NotFound):
        _Cursor(None).accept({"type": "error", "job_id": "j", "code": 4404, "message": "unknown job"}, "ws")


def test_error_responses_become_typed_exceptions() -> None:
    limited = from_response(httpx.Response(429, headers={"Retry-After": "2"},
                                           json={"error": {"code": "rate_limited", "message": "slow down"}}))
    assert isinstance(limited, RateLimited) and limited.retry_after == 2.0 and limited.message == "slow down"
    proxy = from_response(httpx.Response(502, text="<html>Bad Gateway</html>"))
    assert proxy.status == 502 and proxy.code == "http_502" and "Bad Gateway" in proxy.message


def test_arg_pairs_are_json_when_they_are_json() -> None:
    assert parse_args(["steps=20", "name=x", "flag=true", "xs=[1,2]", "s=a=b"], '{"delay": 0.5}') == {
        "delay": 0.5, "steps": 20, "name": "x", "flag": True, "xs": [1, 2], "s": "a=b"}
    with pytest.raises(typer.Exit):
        parse_args(["novalue"], None)


def test_profiles_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[default]\nurl = "http://a:1"\napi_key = "ka"\n[prod]\nurl = "https://b/"\napi_key = "kb"\n')
    monkeypatch.setenv("LONGRUN_CONFIG", str(config))
    for name in ("LONGRUN_URL", "LONGRUN_API_KEY", "LONGRUN_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    assert Config.resolve() == Config("http://a:1", "ka")
    assert Config.resolve(profile="prod") == Config("https://b", "kb")
    monkeypatch.setenv("LONGRUN_API_KEY", "from-env")
    assert Config.resolve().api_key == "from-env"
    with pytest.raises(ValueError, match="no \\[staging\\] profile"):
        Config.resolve(profile="staging")
