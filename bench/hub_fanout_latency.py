"""Fan-out latency: 1,000 WebSocket clients on 100 running jobs at 5 events/s each; Longrun's hub vs polling.

Longrun: the real hub (`python -m longrun_hub`), 10 clients per job on `WS /v1/ws/jobs/{id}?token=…`.
Baseline: the tutorial's polling design (bench/_hub_servers.py `serve-poll`): a Starlette WebSocket handler per
client that every second reads the job's hash (one HGETALL) and sends it, served by uvicorn as a real process.

Same clients (asyncio `websockets`, compression off, in separate client processes), same publishing: one
publisher process publishes through `longrun_common.publisher.Publisher` (the worker's own publish script),
100 jobs x 5 events/s = 500 events/s, paced and interleaved, each event stamped with the publisher's wall clock
(`ts`). Latency = client receipt wall time - the event's `ts`.

Reported per side: latency p50/p99/max of every event frame received (baseline: "staleness", the same
computation with the `ts` of the newest event contained in the state it got), the fraction of the published
events each client received (mean and worst client), "event -> seen": for every published event, how long until
the client had that event or a newer state, and the server's CPU. Longrun is also checked for gaps, duplicates
and order on every socket. Targets: Longrun p99 <= 20 ms, every client receives every event.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import gc
import json
import math
import multiprocessing as mp
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from _common import ms, num, percentile, print_table, ratio, say
from _hub_jobs import announce_jobs, finish_jobs, new_job_ids, paced_publisher, token_for
from _hub_rig import cpu_seconds, hub_lag, raise_nofile, rig, service_tail, use_uvloop

TARGET_P99 = 0.020
LONGRUN = "Longrun hub (push)"
POLL = "polling 1/s (tutorial)"


# --- client processes ------------------------------------------------------------------------------------------

def client_process(kind: str, port: int, plan: list[tuple[str, str]], ready: Any, stop: Any, out: Any,
                   concurrency: int) -> None:
    """Child process: one `websockets` client per (job_id, token); every frame is kept with its receipt time."""
    raise_nofile()
    use_uvloop()
    gc.disable()  # the frames kept for the report would make collections long: pauses that look like latency
    asyncio.run(_clients(kind, port, plan, ready, stop, out, concurrency))


async def _clients(kind: str, port: int, plan: list[tuple[str, str]], ready: Any, stop: Any, out: Any,
                   concurrency: int) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    gate = asyncio.Semaphore(concurrency)
    opened = 0
    all_open = asyncio.Event()
    results: list[dict[str, Any]] = []

    async def one(job_id: str, token: str) -> None:
        nonlocal opened
        path = f"/v1/ws/jobs/{job_id}?token={token}" if kind == "longrun" else f"/ws/jobs/{job_id}"
        record: dict[str, Any] = {"job": job_id, "frames": [], "first": None, "code": None, "error": None}
        results.append(record)
        frames: list[tuple[float, str]] = record["frames"]
        ws = None
        try:
            async with gate:
                ws = await connect(f"ws://127.0.0.1:{port}{path}", compression=None, ping_interval=None,
                                   open_timeout=60, max_queue=None, close_timeout=2)
                record["first"] = await ws.recv()
            opened += 1
            if opened == len(plan):
                all_open.set()
            try:
                async for message in ws:
                    frames.append((time.time(), message))  # type: ignore[arg-type]
            except ConnectionClosed:
                pass
            record["code"] = ws.close_code
        except Exception as exc:  # counted, reported
            record["error"] = f"{type(exc).__name__}: {exc}"
            opened += 1
            if opened == len(plan):
                all_open.set()
        finally:
            if ws is not None:
                await ws.close()

    tasks = [asyncio.create_task(one(job_id, token)) for job_id, token in plan]
    await all_open.wait()
    ready.put(sum(1 for r in results if r["error"] is None))
    loop = asyncio.get_running_loop()
    while not all(t.done() for t in tasks):
        if await loop.run_in_executor(None, stop.wait, 0.2):
            break
    await asyncio.sleep(0.1)
    for task in tasks:  # the baseline never closes by itself; Longrun closes with 1000 after the terminal event
        if not task.done():
            task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    out.put([_digest(kind, r) for r in results])


def _digest(kind: str, record: dict[str, Any]) -> dict[str, Any]:
    """Frames -> (receipt time, seq, ts, extra) after the run (parsing never delays a receipt time)."""
    first = json.loads(record["first"]) if record["first"] else {}
    frames = []
    for t, text in record["frames"]:
        data = json.loads(text)
        if kind == "longrun":
            frames.append((t, int(data.get("seq", -1)), float(data.get("ts", math.nan)), data.get("type"),
                           int(data.get("coalesced", 0)), data.get("status")))
        else:
            frames.append((t, int(data.get("seq", -1)), float(data.get("ts", math.nan)), "state", 0,
                           data.get("status")))
    first_seq = int(first.get("seq", -1)) if first else -1
    return {"job": record["job"], "first_seq": first_seq, "first_type": first.get("type"), "frames": frames,
            "code": record["code"], "error": record["error"]}


# --- one side --------------------------------------------------------------------------------------------------

@dataclass
class SideResult:
    side: str
    clients: int = 0
    connected: int = 0
    events_published: int = 0
    publish_seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # receipt - ts of (newest) event in the frame
    seen: list[float] = field(default_factory=list)  # per published event per client: time until seen
    never_seen: int = 0
    fractions: list[float] = field(default_factory=list)
    frames: int = 0  # received while the publisher ran
    server_cpu: float = 0.0  # fraction of one core during publishing
    problems: Counter[str] = field(default_factory=Counter)
    late_p99: float = 0.0
    hub_lag: str = ""


def run_side(side: str, args: argparse.Namespace, rg: Any) -> SideResult:
    kind = "longrun" if side == LONGRUN else "poll"
    result = SideResult(side)
    server = rg.hub() if kind == "longrun" else rg.baseline("serve-poll")
    try:
        jobs = new_job_ids(args.jobs)
        start_seq = announce_jobs(rg.redis.url, jobs)
        plan = [(job_id, token_for(job_id)) for job_id in jobs for _ in range(args.clients_per_job)]
        result.clients = len(plan)
        ctx = mp.get_context("spawn")
        ready, out, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
        slices = [plan[i::args.client_procs] for i in range(args.client_procs)]
        procs = [ctx.Process(target=client_process, args=(kind, server.port, s, ready, stop, out, 64), daemon=True)
                 for s in slices]
        say(f"{side}: opening {len(plan)} sockets from {len(procs)} client processes")
        for p in procs:
            p.start()
        result.connected = sum(ready.get(timeout=180) for _ in procs)
        say(f"{side}: {result.connected} connected; publishing {args.rate:g} events/s to each of {args.jobs} jobs "
            f"for {args.seconds:g}s")
        events_per_job = max(1, round(args.rate * args.seconds))
        pub_out = ctx.Queue()
        start_at = time.time() + 0.5
        publisher = ctx.Process(target=paced_publisher,
                                args=(rg.redis.url, jobs, args.rate, events_per_job, start_at, pub_out), daemon=True)
        publisher.start()
        while time.time() < start_at:
            time.sleep(0.01)
        cpu0, t0 = cpu_seconds(server.process.pid), time.time()
        published = pub_out.get(timeout=args.seconds * 3 + 60)
        cpu1, t1 = cpu_seconds(server.process.pid), time.time()
        publisher.join(10)
        if kind == "longrun":
            time.sleep(0.5)
            result.hub_lag = hub_lag(server.url)
        result.server_cpu = (cpu1 - cpu0) / (t1 - t0)
        result.publish_seconds = published["seconds"]
        result.late_p99 = published["late_p99"]
        sent: dict[str, list[tuple[int, float]]] = published["sent"]
        result.events_published = sum(len(v) for v in sent.values())
        if kind == "longrun":
            finish_jobs(rg.redis.url, jobs)  # the hub closes each socket with 1000 after the terminal event
            threading.Timer(20, stop.set).start()  # clients leave by themselves; this only bounds the wait
        else:
            time.sleep(args.poll_interval + 0.5)  # let every poller read the final state once more
            stop.set()
        records = [r for _ in procs for r in out.get(timeout=120)]
        for p in procs:
            p.join(10)
        window = (published["began"], published["began"] + published["seconds"])
        _evaluate(kind, result, records, sent, start_seq, window)
        if result.problems.get("connect errors"):
            say(f"{side}: server log tail:\n{service_tail(server)}")
    finally:
        rg.stop(server)
    return result


def _evaluate(kind: str, result: SideResult, records: list[dict[str, Any]],
              sent: dict[str, list[tuple[int, float]]], start_seq: dict[str, int],
              window: tuple[float, float]) -> None:
    begin, end = window
    for record in records:
        if record["error"]:
            result.problems["connect errors"] += 1
            continue
        job_id = record["job"]
        published = sent[job_id]
        published_seqs = {seq: ts for seq, ts in published}
        frames = record["frames"]
        result.frames += sum(1 for f in frames if begin <= f[0] <= end)
        got: set[int] = set()
        if kind == "longrun":
            last = record["first_seq"]
            if record["first_type"] != "snapshot":
                result.problems["first frame not a snapshot"] += 1
            for t, seq, ts, _typ, coalesced, _status in frames:
                if seq <= last:
                    result.problems["duplicate or out-of-order frames"] += 1
                    continue
                if seq != last + 1 + coalesced:
                    result.problems["gaps (seq jumped)"] += 1
                if coalesced:
                    result.problems["coalesced frames"] += 1
                last = seq
                if seq in published_seqs:
                    got.add(seq)
                    result.latencies.append(t - ts)
            terminal = frames and frames[-1][5] in ("succeeded", "failed", "cancelled")
            if not terminal:
                result.problems["terminal event missing"] += 1
            if record["code"] != 1000:
                result.problems[f"close code {record['code']}"] += 1
        else:
            if record["code"] is not None:
                result.problems[f"closed by the server before the end (code {record['code']})"] += 1
            for t, seq, ts, _typ, _c, _status in frames:
                if seq > start_seq[job_id] and t <= end:  # a state received while events were published
                    result.latencies.append(t - ts)
                if seq in published_seqs:
                    got.add(seq)
        result.fractions.append(len(got) / len(published) if published else math.nan)
        # event -> seen: the first frame carrying this event or a newer one
        times = [f[0] for f in frames]
        best: list[int] = []
        running = -1
        for f in frames:
            running = max(running, f[1])
            best.append(running)
        for seq, ts in published:
            index = bisect.bisect_left(best, seq)
            if index >= len(best):
                result.never_seen += 1
            else:
                result.seen.append(times[index] - ts)


# --- main ------------------------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--jobs", type=int, default=100, help="running jobs")
    ap.add_argument("--clients-per-job", type=int, default=10, help="WebSocket clients per job")
    ap.add_argument("--rate", type=float, default=5.0, help="events/s per job")
    ap.add_argument("--seconds", type=float, default=20.0, help="publishing time per side")
    ap.add_argument("--client-procs", type=int, default=2, help="client processes")
    ap.add_argument("--poll-interval", type=float, default=1.0, help="baseline: seconds between two reads")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (server logs)")
    args = ap.parse_args()
    raise_nofile()
    results = []
    with rig("hub-fanout", keep=args.keep) as rg:
        for side in (LONGRUN, POLL):
            results.append(run_side(side, args, rg))
    report(args, results)


def report(args: argparse.Namespace, results: list[SideResult]) -> None:
    lr, poll = results
    rows = []
    for r in results:
        fr = [f for f in r.fractions if not math.isnan(f)]
        rows.append([
            r.side, f"{r.connected}/{r.clients}", num(r.events_published),
            num(r.frames / max(1, r.connected) / max(r.publish_seconds, 1e-9), 1),
            f"{100 * (sum(fr) / len(fr) if fr else math.nan):.1f}% / {100 * (min(fr) if fr else math.nan):.1f}%",
            ms(percentile(r.latencies, 50)), ms(percentile(r.latencies, 99)), ms(max(r.latencies, default=math.nan)),
            ms(percentile(r.seen, 50)), ms(percentile(r.seen, 99)), f"{100 * r.server_cpu:.0f}%",
        ])
    rows.append(["Longrun / polling", "", "", "", "",
                 ratio(percentile(lr.latencies, 50), percentile(poll.latencies, 50)),
                 ratio(percentile(lr.latencies, 99), percentile(poll.latencies, 99)), "",
                 ratio(percentile(lr.seen, 50), percentile(poll.seen, 50)),
                 ratio(percentile(lr.seen, 99), percentile(poll.seen, 99)), ""])
    fr = [f for f in lr.fractions if not math.isnan(f)]
    all_events = bool(fr) and min(fr) == 1.0 and lr.connected == lr.clients
    p99 = percentile(lr.latencies, 99)
    met = p99 <= TARGET_P99 and all_events
    problems = ", ".join(f"{k}: {v}" for k, v in sorted(lr.problems.items())) or "none"
    poll_problems = ", ".join(f"{k}: {v}" for k, v in sorted(poll.problems.items())) or "none"
    print_table(
        f"Fan-out latency: {lr.clients} clients on {args.jobs} jobs ({args.clients_per_job}/job), {args.rate:g} "
        f"events/s per job ({args.rate * args.jobs:g}/s total) for {args.seconds:g}s; same publisher, same clients",
        ["side", "connected", "events", "frames/client/s", "received mean/worst", "lat p50", "lat p99", "lat max",
         "event->seen p50", "event->seen p99", "server CPU"],
        rows,
        [f"target: Longrun p99 <= {TARGET_P99 * 1000:g} ms and every client receives every event -> "
         f"{'MET' if met else 'MISSED'} (p99 {ms(p99)}, every event to every client: {all_events})",
         "lat = client receipt wall time - the event's ts (publisher's wall clock); for polling this is the "
         "staleness: receipt - ts of the newest event in the state received (states received while publishing)",
         "frames/client/s: frames received while the publisher ran / its duration",
         "event->seen = for each published event and each client, receipt of the first frame carrying it or a "
         "newer state - the event's ts",
         f"the hub's own lag metric (its send time - ts, from /metrics): {lr.hub_lag}",
         f"Longrun stream checks (gaps, duplicates, order, terminal, close 1000): {problems}; never seen: "
         f"{lr.never_seen}",
         f"polling: problems {poll_problems}; events never seen (superseded before a read counts as seen): "
         f"{poll.never_seen}",
         f"publisher pacing: p99 late {ms(lr.late_p99)} (Longrun run), {ms(poll.late_p99)} (polling run); "
         "server CPU = share of one core while publishing",
         *([f"WARNING: the publisher itself ran {ms(lr.late_p99)} late at p99 during the Longrun run: the machine "
            "was short of CPU (other processes), and the latencies include that starvation"]
           if lr.late_p99 > 0.005 else [])],
    )


if __name__ == "__main__":
    main()
