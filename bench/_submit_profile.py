"""Where the gateway's CPU goes during a submit benchmark: py-spy samples, attributed to the parts of a submit."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

from _common import collapsed_stacks, num, print_table

# Exclusive attribution: a sample goes to the deepest frame in its stack that matches one of these (so the
# shares add up to 100%); a sample matching none is the server's own machinery (uvicorn, asyncio, threads).
PARTS = [
    ("handler: SQL catalog read (load_task)", "load_task (longrun_gateway/submission.py"),
    ("handler: args JSON Schema check", "check_args (longrun_gateway/submission.py"),
    ("handler: Job row + limits (build_job rest)", "build_job (longrun_gateway/submission.py"),
    ("handler: queued events (Lua publish)", "longrun_common/publisher.py"),
    ("handler: Celery message + fair hold (dispatch)", "longrun_common/dispatch.py"),
    ("handler: dispatched marks (HSET)", "dispatch_many (longrun_common/jobs.py"),
    ("handler: announce rest", "announce_many (longrun_common/jobs.py"),
    ("handler: SQL INSERT + COMMIT (Core, group)", "submit_many (longrun_common/jobs.py"),
    ("handler: SQL INSERT + COMMIT (Core, keyed)", "accept (longrun_common/jobs.py"),
    ("handler: snapshot read (HGETALL)", "snapshot (longrun_gateway/views.py"),
    ("handler: job view + stream token", "present (longrun_gateway/views.py"),
    ("handler: idempotency digest etc.", "submit (longrun_gateway/submission.py"),
    ("handler: group rest (submit_group)", "submit_group (longrun_gateway/submission.py"),
    ("handler: metrics + JSONResponse + rest", "submit_job (longrun_gateway/routes/jobs.py"),
    ("request body parse + pydantic", "parse (longrun_gateway/deps.py"),
    ("auth (API key: bootstrap, cache or SQL)", "longrun_gateway/auth.py"),
    ("auth (get_tenant)", "get_tenant (longrun_gateway/deps.py"),
    ("auth + rate limit + body (resolve_submission)", "resolve_submission (longrun_gateway/deps.py"),
    ("threadpool hand-off (anyio)", "anyio/"),
    ("submit lane (queue, hand-off, answers)", "longrun_gateway/lane.py"),
    ("FastAPI routing + dependencies", "fastapi/"),
    ("Starlette routing/exceptions", "starlette/"),
    ("metrics middleware (prometheus)", "longrun_gateway/middleware.py"),
    ("logging (access log)", "logging/__init__.py"),
    ("uvicorn HTTP protocol (httptools)", "uvicorn/protocols/http"),
]
OTHER = "asyncio loop, threads, other"


def profile_gateway(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """Start py-spy (a dev dependency) sampling the gateway for `seconds`."""
    argv = [str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid), "--duration",
            str(int(seconds)), "--rate", "200", "--format", "raw", "--output", str(out), "--nonblocking", "--gil"]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def summarize_profile(path: Path) -> None:
    total = 0
    parts: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    for frames, samples in collapsed_stacks(path):
        total += samples
        parts[_part(frames)] += samples
        leaf[_short(frames[-1])] += samples
    if not total:
        print("py-spy recorded no samples")
        return
    rows = [[label, num(parts[label]), f"{parts[label] / total * 100:.1f}%"] for label, _ in [*PARTS, (OTHER, "")]]
    print_table(f"Where the gateway's CPU goes (py-spy --gil, {total} samples; each sample counted once, under the "
                "deepest named frame)", ["part", "samples", "share"], rows)
    print_table("Hottest leaf frames (self time)", ["frame", "samples", "share"],
                [[f, num(c), f"{c / total * 100:.1f}%"] for f, c in leaf.most_common(10)])


def _part(frames: list[str]) -> str:
    for frame in reversed(frames):
        for label, needle in PARTS:
            if needle in frame:
                return label
    return OTHER


def _short(frame: str) -> str:
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    parts = where.split("/")
    return f"{name} ({'/'.join(parts[-2:])})"


