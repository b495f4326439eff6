"""Memory per idle WebSocket: RSS of one hub process before and after 10,000 idle sockets vs a bare `websockets` server.

Longrun: the real hub (`python -m longrun_hub`), 10,000 sockets on `WS /v1/ws/jobs/{id}?token=…` over 1,000 jobs
(10 per job): each is authenticated, subscribed (the job's channel on the hub's one pub/sub connection) and got its
snapshot frame. Baseline: bench/_hub_servers.py `serve-bare`, the minimal `websockets.serve` broadcast loop (uvloop,
compression off, one PSUBSCRIBE), holding the same 10,000 sockets, each registered for its job.

Clients: minimal asyncio WebSocket clients (bench/_hub_clients.py RawClient; they answer pings) from 4 processes.
Each server first serves a warm-up of a few hundred sockets that are closed again, so the "before" figure already
includes what the first connections allocate once (imports, pools). Per connection = (VmRSS after - VmRSS before)
/ sockets open, read from /proc/PID/status after the sockets have been idle for a few seconds.
Target: Longrun <= 20 KB per idle connection.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from _common import num, print_table, ratio, say
from _hub_clients import RawPlan, raw_client_process
from _hub_jobs import announce_jobs, new_job_ids, token_for
from _hub_rig import raise_nofile, rig, rss_kb, service_tail
from _hub_servers import traced_allocations

TARGET_KB = 20.0
LONGRUN = "Longrun hub"
BARE = "bare websockets server"


@dataclass
class SideResult:
    side: str
    wanted: int = 0
    connected: int = 0
    before_kb: int = 0
    after_kb: int = 0
    open_seconds: float = 0.0
    stats: Counter[str] = field(default_factory=Counter)

    @property
    def per_connection_kb(self) -> float:
        return (self.after_kb - self.before_kb) / max(1, self.connected)


def open_clients(port: int, sockets: list[tuple[str, int, int]], procs: int, longrun: bool,
                 ) -> tuple[list[Any], Any, Any, int, float]:
    ctx = mp.get_context("spawn")
    ready, out, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    children = []
    for i in range(procs):
        plan = RawPlan("127.0.0.1", port, sockets[i::procs], i, 1, wait_first_frame=longrun, concurrency=100)
        children.append(ctx.Process(target=raw_client_process, args=(plan, None, None, ready, stop, out),
                                    daemon=True))
    began = time.monotonic()
    for child in children:
        child.start()
    connected = sum(ready.get(timeout=600) for _ in children)
    return children, out, stop, connected, time.monotonic() - began


def close_clients(children: list[Any], out: Any, stop: Any) -> Counter[str]:
    stop.set()
    stats: Counter[str] = Counter()
    for _ in children:
        stats.update(out.get(timeout=120))
    for child in children:
        child.join(10)
    return stats


def run_side(side: str, args: argparse.Namespace, rg: Any) -> SideResult:
    longrun = side == LONGRUN
    result = SideResult(side, wanted=args.connections)
    server = rg.hub() if longrun else rg.baseline("serve-bare")
    try:
        jobs = new_job_ids(args.jobs)
        start = announce_jobs(rg.redis.url, jobs)

        def path(job_id: str) -> str:
            return f"/v1/ws/jobs/{job_id}?token={token_for(job_id)}" if longrun else f"/jobs/{job_id}"

        tokens = {job_id: path(job_id) for job_id in jobs}
        sockets = [(tokens[jobs[i % len(jobs)]], 0, start[jobs[i % len(jobs)]]) for i in range(args.connections)]
        pid = server.process.pid
        say(f"{side}: warm-up with {args.warmup} sockets (opened and closed), RSS {num(rss_kb(pid))} KiB")
        warm = open_clients(server.port, sockets[: args.warmup], 1, longrun)
        close_clients(warm[0], warm[1], warm[2])
        time.sleep(args.settle)
        result.before_kb = rss_kb(pid)
        say(f"{side}: RSS before {num(result.before_kb)} KiB; opening {args.connections} idle sockets on "
            f"{args.jobs} jobs from {args.client_procs} client processes")
        children, out, stop, result.connected, result.open_seconds = open_clients(
            server.port, sockets, args.client_procs, longrun)
        time.sleep(args.settle)
        result.after_kb = rss_kb(pid)
        say(f"{side}: {result.connected} open in {result.open_seconds:.1f}s; RSS after {num(result.after_kb)} KiB")
        result.stats = close_clients(children, out, stop)
        if result.connected < args.connections:
            say(f"{side}: server log tail:\n{service_tail(server)}")
    finally:
        rg.stop(server)
    return result


def run_traced(args: argparse.Namespace, rg: Any) -> list[str]:
    """The hub again, under tracemalloc: which allocation sites the idle sockets grew (attribution only)."""
    snapdir = rg.workdir / "tracemalloc"
    snapdir.mkdir(exist_ok=True)
    server = rg.traced_hub(snapdir)
    try:
        jobs = new_job_ids(args.jobs)
        start = announce_jobs(rg.redis.url, jobs)
        paths = {job_id: f"/v1/ws/jobs/{job_id}?token={token_for(job_id)}" for job_id in jobs}
        sockets = [(paths[jobs[i % len(jobs)]], 0, start[jobs[i % len(jobs)]]) for i in range(args.connections)]
        warm = open_clients(server.port, sockets[: args.warmup], 1, True)
        close_clients(warm[0], warm[1], warm[2])
        time.sleep(args.settle)
        pid = server.process.pid
        before_kb = rss_kb(pid)
        os.kill(pid, signal.SIGUSR1)
        _wait_file(snapdir / "snap-1.tracemalloc")
        say(f"traced hub: opening {args.connections} idle sockets")
        children, out, stop, connected, _seconds = open_clients(server.port, sockets, args.client_procs, True)
        time.sleep(args.settle)
        after_kb = rss_kb(pid)
        os.kill(pid, signal.SIGUSR1)
        _wait_file(snapdir / "snap-2.tracemalloc")
        close_clients(children, out, stop)
        lines = [f"  RSS growth under tracing: {(after_kb - before_kb) / max(1, connected):.1f} KiB per connection "
                 f"({connected} open)"]
        lines += traced_allocations(snapdir / "snap-1.tracemalloc", snapdir / "snap-2.tracemalloc", connected,
                                    top=args.tracemalloc_top)
        return lines
    finally:
        rg.stop(server)


def _wait_file(path: Any, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        if path.exists():
            size = path.stat().st_size
            if size == last and size > 0:
                return
            last = size
        time.sleep(0.5)
    raise TimeoutError(f"no tracemalloc snapshot at {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--connections", type=int, default=10_000, help="idle WebSockets held open")
    ap.add_argument("--jobs", type=int, default=1000, help="jobs the sockets are spread over")
    ap.add_argument("--client-procs", type=int, default=4, help="client processes")
    ap.add_argument("--warmup", type=int, default=300, help="sockets opened and closed before the 'before' reading")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds idle before each RSS reading")
    ap.add_argument("--tracemalloc", action="store_true",
                    help="also run the hub under tracemalloc and list the allocation sites the sockets grew")
    ap.add_argument("--tracemalloc-top", type=int, default=20, help="allocation sites listed")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (server logs)")
    args = ap.parse_args()
    raise_nofile()  # the servers inherit it
    with rig("hub-memory", keep=args.keep) as rg:
        results = [run_side(side, args, rg) for side in (LONGRUN, BARE)]
        traced = run_traced(args, rg) if args.tracemalloc else []
    report(args, results)
    if traced:
        print("\nLongrun hub under tracemalloc (growth from the idle sockets, top allocation sites):")
        print("\n".join(traced))


def report(args: argparse.Namespace, results: list[SideResult]) -> None:
    lr, bare = results
    rows = [[r.side, f"{r.connected}/{r.wanted}", f"{r.open_seconds:.1f} s", f"{r.before_kb / 1024:.1f} MiB",
             f"{r.after_kb / 1024:.1f} MiB", f"{(r.after_kb - r.before_kb) / 1024:.1f} MiB",
             f"{r.per_connection_kb:.1f} KiB", ratio(r.per_connection_kb, bare.per_connection_kb)] for r in results]
    met = lr.per_connection_kb <= TARGET_KB and lr.connected == lr.wanted
    notes = [f"target: Longrun <= {TARGET_KB:g} KB per idle connection -> {'MET' if met else 'MISSED'} "
             f"({lr.per_connection_kb:.1f} KiB, {lr.connected}/{lr.wanted} open)",
             "per connection = (VmRSS after - VmRSS before) / sockets open; Longrun sockets each hold a "
             "subscription (watcher) and got a snapshot; bare sockets are registered for their job"]
    for r in results:
        stats = {k: v for k, v in r.stats.items() if k not in ("connected", "event frames") and v}
        notes.append(f"{r.side}: " + (", ".join(f"{k}: {v}" for k, v in sorted(stats.items())) or "no problems"))
    print_table(f"Memory per idle WebSocket: {args.connections} sockets on {args.jobs} jobs, one server process",
                ["server", "open", "open time", "RSS before", "RSS after", "delta", "per connection", "vs bare"],
                rows, notes)


if __name__ == "__main__":
    main()
