"""A seeded frame fuzzer against a real hub process and a real Redis (issue 7, "fuzzing as a test").

Each case opens a socket (mostly the multiplexed one, sometimes a single-job one, sometimes with a bad token, job
or `since`), sends one to four random frames — JSON of random shapes, types, depths and sizes, broken JSON,
invalid UTF-8, binary, empty, fragmented and oversized frames — and then checks that the socket is either
closed with a documented code or still serving: a subscribe to a live job must be answered with its snapshot (a
single-job socket must answer a ping). Never silence, never 1006 / 1011, never a frame that grew with the input.
After all cases the connection gauge is back to zero, the hub's RSS has not grown beyond a bound, and its log
has no traceback.

Reproduce a failure with the seed and case it names: `HUB_FUZZ_SEED=… HUB_FUZZ_CASES=… pytest …test_hub_fuzz.py`
(each case draws from its own `Random(seed * 1_000_003 + case)`, so one case replays alone too).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from hubtest import Jobs, eventually, private_hub, ws_url

from longrun_common.settings import Settings
from longrun_hub.frames import CLIENT_FRAME_MAX
from tests.support.processes import Service

pytestmark = pytest.mark.integration

SEED = int(os.environ.get("HUB_FUZZ_SEED", "20261202"))
CASES = int(os.environ.get("HUB_FUZZ_CASES", "2500"))
BUDGET_SECONDS = 45.0  # no new case starts after this (the checks after the cases still run)
CASE_SECONDS = 5.0
# The close codes of docs/API.md, plus 1007 (websockets: a text frame that is not UTF-8).
DOCUMENTED = {1000, 1007, 1008, 1009, 1012, 1013, 4401, 4403, 4404}
FRAME_TYPES = {"snapshot", "progress", "status", "error", "end", "reconnect"}
ANSWER_MAX = 4096  # a hub frame answering a client frame never grows with what the client sent
RSS_GROWTH_MAX = 40 * 1024 * 1024


@dataclass
class Finding:
    case: int
    what: str
    sent: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"HUB_FUZZ_SEED={SEED} case {self.case}: {self.what}; sent {self.sent}"


# --- generators -------------------------------------------------------------------------------------------------

def text_value(rng: random.Random) -> str:
    pools = ["abc", "0123456789", "é漢字🙂", "\x00\x1f\x7f", "\ud800\udfff", ":*?[]{}\"\\", " \t\n"]
    size = rng.choice([0, 1, 5, 36, 129, 500, 3000])
    return "".join(rng.choice(rng.choice(pools)) for _ in range(size))


def json_value(rng: random.Random, depth: int = 0) -> Any:
    kinds = ["null", "bool", "int", "bigint", "float", "str", "list", "dict"] if depth < 4 else ["int", "str"]
    kind = rng.choice(kinds)
    if kind == "null":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "int":
        return rng.choice([0, 1, -1, 2**63 - 1, 2**63, -(2**63), rng.randint(-10**6, 10**6)])
    if kind == "bigint":
        return rng.choice([1, -1]) * 10 ** rng.randint(19, 400)
    if kind == "float":
        return rng.choice([0.5, -0.0, 1e308, -1e-308, 3.0, float("nan"), float("inf")])
    if kind == "str":
        return text_value(rng)
    if kind == "list":
        return [json_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {text_value(rng)[:20]: json_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def dumps(value: Any) -> str:
    """JSON as a client might write it (NaN / Infinity included: Python's parser accepts them); lone surrogates
    as `\\ud800` escapes, which is how they can reach the hub in valid UTF-8."""
    text = json.dumps(value, ensure_ascii=False)
    try:
        text.encode()
    except UnicodeEncodeError:
        return json.dumps(value)
    return text


def sendable(payload: str | bytes | list[str]) -> str | bytes | list[str]:
    """A text with a raw lone surrogate goes out as the bytes it would be (not UTF-8: the hub must close 1007)."""
    if isinstance(payload, str):
        try:
            payload.encode()
        except UnicodeEncodeError:
            return payload.encode("utf-8", "surrogatepass")
    return payload


def fuzz_frame(rng: random.Random, job: str) -> tuple[str, str | bytes | list[str], bool]:
    """(label, payload, as text). A list payload is sent fragmented."""
    kind = rng.randrange(16)
    if kind == 0:
        since = rng.choice([None, 0, 1, 3, "2", " 4 ", "²", "١٢", -1, 2**63, 1.5, True, "9" * 30, [], {}])
        return "subscribe-known", dumps({"op": "subscribe", "job_id": job, "since": since}), True
    if kind == 1:
        return "subscribe-any", dumps({"op": "subscribe", "job_id": json_value(rng)}), True
    if kind == 2:
        return "unsubscribe-any", dumps({"op": "unsubscribe", "job_id": rng.choice([job, json_value(rng)])}), True
    if kind == 3:
        return "op-any", dumps({"op": json_value(rng), "job_id": job}), True
    if kind == 4:
        return "json-any", dumps(json_value(rng)), True
    if kind == 5:
        depth = rng.choice([10, 500, 999, 1000, 1500, 4000, 5000])
        nested = rng.choice(["[" * depth + "]" * depth, '{"a":' * depth + "0" + "}" * depth,
                             '{"op":"subscribe","job_id":' + "[" * depth + "]" * depth + "}"])
        return f"nested-{depth}", nested, True
    if kind == 6:
        good = dumps({"op": "subscribe", "job_id": job})
        broken = [good[: rng.randrange(len(good))], good + "}", "{'op': 1}", "nul", "\ufeff" + good, text_value(rng)]
        return "broken-json", rng.choice(broken), True
    if kind == 7:
        return "bad-utf8", rng.choice([b"\xff\xfe", b'{"op":"\xc3"}', b"\xed\xa0\x80", bytes(rng.randbytes(20))]), True
    if kind == 8:
        payload = rng.choice([rng.randbytes(rng.randint(0, 300)), dumps({"op": "subscribe", "job_id": job}).encode()])
        return "binary", payload, False
    if kind == 9:
        size = rng.choice([CLIENT_FRAME_MAX + 1, 64 * 1024, 1024 * 1024])
        return f"huge-{size}", ("x" * size) if rng.random() < 0.5 else b"x" * size, rng.random() < 0.5
    if kind == 10:
        return "empty", "", True
    if kind == 11:
        good = dumps({"op": "subscribe", "job_id": job})
        cut = rng.randrange(1, len(good))
        return "fragmented", [good[:cut], good[cut:]], True
    if kind == 12:
        extra = {text_value(rng)[:10]: json_value(rng) for _ in range(rng.randint(1, 5))}
        return "extra-fields", dumps({"op": "subscribe", "job_id": job, **extra}), True
    if kind == 13:
        other = dumps(json_value(rng))
        repeated = '{"op":"subscribe","op":"unsubscribe","job_id":"' + job + '","job_id":' + other + "}"
        return "duplicate-keys", repeated, True
    if kind == 14:
        job_id = rng.choice(["a" * 129, "a" * 128, "../x", "x:y", "", " ", str(uuid.uuid4()), "é", "\ud800"])
        return "job-id-edge", dumps({"op": "subscribe", "job_id": job_id}), True
    padded = dumps({"op": "subscribe", "job_id": job, "pad": "p" * rng.randint(0, CLIENT_FRAME_MAX)})
    return "padded", padded, True


# --- one case -----------------------------------------------------------------------------------------------------

@dataclass
class Target:
    base: str
    jobs: Jobs
    live_job: str  # never finished: a subscribe to it is always answered with a snapshot
    other_job: str  # same tenant, for job tokens of another job
    foreign_job: str  # another tenant's


def connection(rng: random.Random, target: Target) -> tuple[str, str, set[int] | None]:
    """(kind, url, the close codes this connection must get at once — None: it opens and is served)."""
    jobs, live = target.jobs, target.live_job
    roll = rng.random()
    if roll < 0.65:
        return "mux", ws_url(target.base, "/v1/ws", token=jobs.token(None)), None
    if roll < 0.72:
        return "mux-jobtoken", ws_url(target.base, "/v1/ws", token=jobs.token(target.other_job)), None
    if roll < 0.87:
        return "job", ws_url(target.base, f"/v1/ws/jobs/{live}", token=jobs.token(live)), None
    if roll < 0.90:
        token = rng.choice(["", "x", "a.b.c", jobs.token(None)[:-3] + "abc", "%00"])
        return "bad-token", ws_url(target.base, rng.choice(["/v1/ws", f"/v1/ws/jobs/{live}"]), token=token), {4401}
    if roll < 0.93:
        return "job-wrong-token", ws_url(target.base, f"/v1/ws/jobs/{live}", token=jobs.token(target.other_job)), {4403}
    if roll < 0.96:
        job = rng.choice([target.foreign_job, str(uuid.uuid4()), "a" * 200, "x:y"])
        return "job-unknown", ws_url(target.base, f"/v1/ws/jobs/{job}", token=jobs.token(None)), {4404}
    since = rng.choice(["-1", "abc", "9" * 30, "1.5", "%C2%B2"])
    return "job-bad-since", ws_url(target.base, f"/v1/ws/jobs/{live}", token=jobs.token(live), since=since), {1008}


async def run_case(case: int, target: Target) -> Finding | None:
    rng = random.Random(SEED * 1_000_003 + case)
    kind, url, refused = connection(rng, target)
    frames = [fuzz_frame(rng, rng.choice([target.live_job, target.other_job, target.foreign_job]))
              for _ in range(rng.randint(1, 4))]
    sent = [f"{kind}"] + [label for label, _, _ in frames]
    finding = Finding(case, "", sent)
    received: list[str] = []
    ws: websockets.ClientConnection | None = None
    try:
        async with asyncio.timeout(CASE_SECONDS):
            async with websockets.connect(url, max_size=None, open_timeout=CASE_SECONDS) as ws:
                try:
                    if refused is None and kind == "job":
                        received.append(str(await ws.recv()))  # the snapshot comes first
                    for _label, payload, as_text in frames:
                        if refused is not None:
                            break
                        await ws.send(sendable(payload), text=as_text)
                    if refused is None:
                        await probe(ws, kind, target, received)
                        return check_frames(finding, received)
                except websockets.ConnectionClosed:
                    pass
                async for message in ws:  # what was sent before the close
                    received.append(str(message))
    except websockets.ConnectionClosed:
        pass
    except websockets.InvalidStatus as exc:
        finding.what = f"handshake answered {exc.response.status_code}"
        return finding
    except TimeoutError:
        finding.what = f"silence: no answer and no close within {CASE_SECONDS} s (received {received[-3:]})"
        return finding
    code = ws.close_code if ws is not None else None
    reason = ws.close_reason if ws is not None else None
    if code not in DOCUMENTED or (refused is not None and code not in refused):
        finding.what = f"closed {code} ({reason!r}); expected {sorted(refused or DOCUMENTED)}"
        return finding
    return check_frames(finding, received)


async def probe(ws: websockets.ClientConnection, kind: str, target: Target, received: list[str]) -> None:
    """The socket is open: it must still be served (raises ConnectionClosed if it closes meanwhile)."""
    if kind.startswith("job"):
        pong = await ws.ping()
        async with asyncio.timeout(CASE_SECONDS / 2):
            await pong
        return
    job = target.other_job if kind == "mux-jobtoken" else target.live_job
    await ws.send(json.dumps({"op": "subscribe", "job_id": job}))
    while True:
        text = str(await ws.recv())
        received.append(text)
        frame = json.loads(text)
        if frame.get("job_id") == job and frame.get("type") in ("snapshot", "error"):
            return


def check_frames(finding: Finding, received: list[str]) -> Finding | None:
    for text in received:
        try:
            frame = json.loads(text)
        except ValueError:
            finding.what = f"a frame that is not JSON: {text[:200]!r}"
            return finding
        if not isinstance(frame, dict) or frame.get("type") not in FRAME_TYPES:
            finding.what = f"an unexpected frame: {text[:200]!r}"
            return finding
        if frame["type"] in ("error", "end") and len(text) > ANSWER_MAX:
            finding.what = f"an answer of {len(text)} characters: {text[:200]!r}"
            return finding
    return None


# --- the test -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fuzz_hub(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A hub of the fuzzer's own: its gauge, RSS and log concern only these cases."""
    with private_hub(redis_url, tmp_path_factory.mktemp("fuzz-hub"), "hub-fuzz") as service:
        yield service


def rss_bytes(service: Service) -> int:
    assert service.process is not None
    for line in Path(f"/proc/{service.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def open_connections(base: str) -> float:
    text = (await asyncio.to_thread(httpx.get, base + "/metrics", timeout=5)).text
    return sum(float(row.rsplit(" ", 1)[1]) for row in text.splitlines()
               if row.startswith("longrun_hub_connections{"))


async def test_frame_fuzzer(fuzz_hub: Service, jobs: Jobs, redis_url: str) -> None:
    hjobs = Jobs(jobs.client, Settings(redis_url=redis_url, key_prefix=fuzz_hub.env["LONGRUN_KEY_PREFIX"]))
    target = Target(fuzz_hub.url, hjobs, await hjobs.create(), await hjobs.create(), await hjobs.create("other"))
    await hjobs.start(target.live_job)
    findings: list[Finding] = []
    warmup = min(40, CASES // 4)
    baseline = 0
    started = time.monotonic()
    ran = 0
    for case in range(CASES):
        if case == warmup:
            baseline = rss_bytes(fuzz_hub)
        if time.monotonic() - started > BUDGET_SECONDS:
            break
        finding = await run_case(case, target)
        ran += 1
        if finding is not None:
            findings.append(finding)
            if len(findings) >= 10:
                break
    assert not findings, "\n".join(map(str, findings))
    assert ran >= min(CASES, 100), f"only {ran} cases within {BUDGET_SECONDS} s"
    await eventually(lambda: open_connections(fuzz_hub.url), 0.0, within=15)
    growth = rss_bytes(fuzz_hub) - baseline
    assert growth < RSS_GROWTH_MAX, f"RSS grew by {growth / 2**20:.1f} MiB over {ran - warmup} cases"
    log = fuzz_hub.logs()
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-3000:]
    print(f"hub frame fuzzer: seed {SEED}, {ran} cases in {time.monotonic() - started:.1f} s, "
          f"RSS {growth / 2**20:+.1f} MiB after warm-up")
