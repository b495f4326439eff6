"""Submissions through `POST /v1/jobs` (a real uvicorn gateway) vs raw Celery `send_task` of the same message.

Both sides publish the same Celery message (task `demo.steps`, kwargs `{job_id, attempt}`) to the same private
Redis in the same run: the raw side with Celery's `send_task`, the gateway through `dispatch.send_job` (which
stores the same bytes with one LPUSH); no worker consumes it. The gateway also does
what an accepted job costs: auth, JSON and schema validation against the SQL task catalog, the SQL insert, the
`queued` event (Lua), the message, and the response with a stream token.

  (a) max throughput: N concurrent clients (keep-alive connections; the
      load generator is bench/_submit_load.py, its own CPU per request is reported) for a fixed time; raw Celery with
      N threads and with 1 thread (the better one is the baseline).
  (b) latency at a fixed offered rate (open loop: request i is sent at t0 + i/rate whatever happened before;
      latency is measured from that scheduled time, so queueing behind a slow request counts).

Targets: gateway throughput >= 70% of raw; gateway p99 <= 20 ms at 200 req/s; gateway CPU per accepted job
<= 3x the CPU a raw send_task costs its sending thread (both measured in this run).
(c) batch: 1,000 jobs as 1,000 single submits vs one `POST /v1/jobs:batch` of 1,000 (wall time, gateway CPU).
`--tracing` then starts a second gateway with OpenTelemetry on (OTLP/HTTP to a receiver in this process that
accepts and drops the spans) and runs the same throughput and fixed-rate phases against it: the cost of
tracing, on vs off in the same run.
`--profile` samples the gateway with py-spy (a dev dependency) during one more
throughput run and prints where its time goes.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import Stack, ms, num, paced, parser, percentile, print_table, ratio, say, stack
from _submit_load import (
    HEADER,
    HttpError,
    Pool,
    Run,
    closed_loop,
    cpu_per,
    measured,
    open_loop,
    request_bytes,
)
from _submit_profile import profile_gateway, summarize_profile
from celery import Celery

from longrun_common.celery_app import create_celery
from longrun_common.db import create_db_engine
from longrun_common.keys import Keys
from tests.support.otlp import OtlpReceiver

TASK = "demo.steps"
ARGS = {"steps": 1}
BODY = json.dumps({"task": TASK, "args": ARGS}).encode()
HEADERS = {"Authorization": "Bearer dev-key", "Content-Type": "application/json"}
TARGET_SHARE = 0.70
TARGET_P99 = 0.020
TARGET_CPU = 3.0  # gateway CPU per accepted job, at most this many times a raw send_task's CPU
BATCH = 1000


# --- raw Celery ------------------------------------------------------------------------------------------------

def raw_message(celery: Celery, keys: Keys) -> Callable[[], None]:
    """Celery's own `send_task` of the gateway's exact message, for a fresh job id (the baseline; the gateway
    stores the same bytes with one LPUSH, see longrun_common/broker.py)."""
    queue = keys.queue("default")

    def send() -> None:
        celery.send_task(TASK, kwargs={"job_id": str(uuid.uuid4()), "attempt": 1}, queue=queue,
                         task_id=f"{uuid.uuid4()}.1", priority=9)

    return send


def raw_throughput(send: Callable[[], None], threads: int, seconds: float, max_requests: int) -> Run:
    run = Run(f"raw send_task, {threads} thread{'s' if threads > 1 else ''}")
    lock = threading.Lock()
    start = time.perf_counter()
    deadline = start + seconds
    budget = [max_requests]

    def loop() -> None:
        mine: list[float] = []
        cpu = time.thread_time()
        while True:
            with lock:
                if budget[0] <= 0:
                    break
                budget[0] -= 1
            began = time.perf_counter()
            if began >= deadline:
                break
            try:
                send()
            except Exception as exc:
                with lock:
                    run.errors[type(exc).__name__] += 1
                continue
            mine.append(time.perf_counter() - began)
        with lock:
            run.latencies.extend(mine)
            # The sending thread's own CPU: what a send_task costs its client (the same-run CPU baseline).
            run.cpu_seconds = (0.0 if run.cpu_seconds != run.cpu_seconds else run.cpu_seconds) + (
                time.thread_time() - cpu)

    pool = [threading.Thread(target=loop) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    run.seconds = time.perf_counter() - start
    return run


def raw_paced(send: Callable[[], None], rate: float, seconds: float) -> Run:
    """Open loop in one thread: request i is due at t0 + i/rate; latency counts from when it was due."""
    run = Run(f"raw send_task @ {rate:g}/s")
    total = int(rate * seconds)
    start = time.perf_counter()
    for _, due in paced(rate, total):
        try:
            send()
        except Exception as exc:
            run.errors[type(exc).__name__] += 1
            continue
        run.latencies.append(time.perf_counter() - due)
    run.seconds = time.perf_counter() - start
    return run


# --- the gateway ------------------------------------------------------------------------------------------------

# Built once: the load generator writes these bytes as they are for every request (bench/_submit_load.py).
SUBMIT = request_bytes("POST", "/v1/jobs", HEADERS, BODY)
HEALTH = request_bytes("GET", "/healthz", {})


async def gateway_throughput(url: str, clients: int, seconds: float, max_requests: int, name: str,
                             path: str = "/v1/jobs") -> Run:
    request, expect = (SUBMIT, 202) if path == "/v1/jobs" else (HEALTH, 200)
    return await closed_loop(url, request, expect, clients, seconds, max_requests, name)


async def gateway_paced(url: str, rate: float, seconds: float, connections: int) -> Run:
    return await open_loop(url, SUBMIT, 202, rate, seconds, connections, f"gateway @ {rate:g}/s")


# --- batch vs single ------------------------------------------------------------------------------------------

def batch_vs_single(url: str, pid: int, clients: int) -> tuple[Run, Run]:
    """BATCH jobs as BATCH single submits (`clients` at a time) vs one `POST /v1/jobs:batch` of BATCH jobs."""
    single = measured(pid, lambda: asyncio.run(gateway_throughput(
        url, clients, 600, BATCH, f"{BATCH:,} x POST /v1/jobs ({clients} clients)")))
    body = json.dumps({"jobs": [{"task": TASK, "args": ARGS}] * BATCH}).encode()

    async def one() -> Run:
        run = Run(f"1 x POST /v1/jobs:batch of {BATCH:,}")
        pool = Pool(url, 1)
        began = time.perf_counter()
        try:
            request = request_bytes("POST", "/v1/jobs:batch", HEADERS, body)
            status, answer = await asyncio.wait_for(pool.exchange(request), timeout=120)
        except (OSError, HttpError, asyncio.IncompleteReadError, TimeoutError) as exc:
            run.errors[type(exc).__name__] += 1
        else:
            if status == 202:
                run.latencies.extend([time.perf_counter() - began] * len(json.loads(answer)["items"]))
            else:
                run.errors[f"HTTP {status}"] += 1
        finally:
            pool.close()
        run.seconds = time.perf_counter() - began
        return run

    return single, measured(pid, lambda: asyncio.run(one()))


# --- tracing on ------------------------------------------------------------------------------------------------

def traced_phases(st: Stack, args: Any) -> tuple[Run, Run, int]:
    """The throughput and fixed-rate phases against a gateway exporting traces to a sink in this process."""
    sink = OtlpReceiver(decode=False).start()
    st.extra_env.update({"OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint})
    try:
        say("starting a gateway with tracing on")
        traced = st.gateway()
        assert traced.process is not None
        pid = traced.process.pid
        asyncio.run(gateway_throughput(traced.url, min(args.clients, 8), 60, args.warmup, "warmup"))
        say(f"throughput: gateway with tracing, {args.clients} clients, {args.seconds:g}s")
        tr = measured(pid, lambda: asyncio.run(gateway_throughput(
            traced.url, args.clients, args.seconds, args.max_requests, f"gateway + tracing, {args.clients} clients")))
        say(f"latency with tracing at {args.rate:g} req/s, {args.rate_seconds:g}s")
        tr_rate = measured(pid, lambda: asyncio.run(gateway_paced(
            traced.url, args.rate, args.rate_seconds, connections=max(args.clients, 64))))
        tr_rate.name = "gateway + tracing, fixed rate"
        time.sleep(1.0)  # the batch exporter's last export
        return tr, tr_rate, sink.requests
    finally:
        del st.extra_env["OTEL_EXPORTER_OTLP_ENDPOINT"]
        sink.stop()


# --- main ------------------------------------------------------------------------------------------------------

def paced_on_two_processes(st: Stack, args: Any) -> Run:
    """The fixed-rate phase against a gateway of `--gateway-workers` uvicorn processes sharing one port (how a
    pod or host serves more than one core's worth of requests). Latency only: its CPU is spread over children."""
    say(f"latency at {args.rate:g} req/s, gateway with --workers {args.gateway_workers}")
    pair = st.gateway("--workers", str(args.gateway_workers))
    asyncio.run(gateway_throughput(pair.url, min(args.clients, 8), 60, args.warmup, "warmup"))
    run = asyncio.run(gateway_paced(pair.url, args.rate, args.rate_seconds, connections=max(args.clients, 64)))
    run.name = f"gateway x{args.gateway_workers} processes @ {args.rate:g}/s"
    pair.stop()
    return run


def register_catalog(st: Stack) -> None:
    """The gateway reads the task catalog from SQL: write it as a starting worker would."""
    import longrun_worker.tasks  # noqa: F401  (registers the built-in tasks)
    from longrun_worker.catalog import register_catalog as register

    engine = create_db_engine(st.settings)
    try:
        register(engine)
    finally:
        engine.dispose()


def main() -> None:
    ap = parser(__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients for the throughput phase")
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each throughput phase")
    ap.add_argument("--rate", type=float, default=200.0, help="offered rate of the latency phase, req/s")
    ap.add_argument("--rate-seconds", type=float, default=5.0, help="length of each fixed-rate phase")
    ap.add_argument("--max-requests", type=int, default=50_000, help="cap on requests per phase")
    ap.add_argument("--warmup", type=int, default=200, help="requests sent to each side before measuring")
    ap.add_argument("--gateway-workers", type=int, default=2,
                    help="also run the fixed-rate phase against a gateway of this many processes (1: skip)")
    ap.add_argument("--tracing", action="store_true",
                    help="also measure a gateway with OpenTelemetry tracing on (OTLP/HTTP to a local sink)")
    ap.add_argument("--profile", action="store_true",
                    help="also sample the gateway with py-spy (uvx) during one more throughput phase")
    args = ap.parse_args()

    # The reaper/reconciler (LONGRUN_MAINTENANCE) scans up to 500 active jobs every few seconds: a cost per second
    # and per waiting job, not per submission, and here the jobs pile up unconsumed. It runs off in the gateways
    # measured here (a deployment runs it in the workers, or in the gateway at this same cost per scan).
    with stack(args, name="submit", extra_env={"LONGRUN_MAINTENANCE": "false"}) as st:
        register_catalog(st)
        say("starting the gateway")
        gateway = st.gateway()
        assert gateway.process is not None and gateway.port is not None
        pid = gateway.process.pid
        settings = st.settings
        celery = create_celery(settings, name="bench-raw")
        send = raw_message(celery, Keys(settings.key_prefix))
        try:
            say(f"warming up ({args.warmup} requests each)")
            raw_throughput(send, 1, 30, args.warmup)
            asyncio.run(gateway_throughput(gateway.url, min(args.clients, 8), 60, args.warmup, "warmup"))

            say(f"throughput: raw Celery, 1 and {args.clients} threads, {args.seconds:g}s each")
            raw_one = raw_throughput(send, 1, args.seconds, args.max_requests)
            raw_many = raw_throughput(send, args.clients, args.seconds, args.max_requests)
            say(f"throughput: gateway, {args.clients} clients, {args.seconds:g}s")
            gw = measured(pid, lambda: asyncio.run(gateway_throughput(
                gateway.url, args.clients, args.seconds, args.max_requests, f"gateway, {args.clients} clients")))
            raw_best = max(raw_one, raw_many, key=lambda r: r.per_second)
            floor = measured(pid, lambda: asyncio.run(gateway_throughput(
                gateway.url, args.clients, min(args.seconds, 3.0), args.max_requests,
                "gateway GET /healthz (floor)", path="/healthz")))

            say(f"latency at {args.rate:g} req/s, {args.rate_seconds:g}s each")
            raw_rate = raw_paced(send, args.rate, args.rate_seconds)
            gw_rate = measured(pid, lambda: asyncio.run(gateway_paced(
                gateway.url, args.rate, args.rate_seconds, connections=max(args.clients, 64))))
            pair_rate = paced_on_two_processes(st, args) if args.gateway_workers > 1 else None

            say(f"batch: {BATCH:,} single submits vs one batch of {BATCH:,}")
            single, batch = batch_vs_single(gateway.url, pid, args.clients)

            traced = traced_phases(st, args) if args.tracing else None

            profile_out = None
            if args.profile:
                profile_out = Path(tempfile.mkdtemp(prefix="longrun-pyspy-")) / "gateway.txt"
                seconds = max(args.seconds, 8.0)
                say(f"profiling the gateway with py-spy for {seconds:g}s under {args.clients} clients")
                spy = profile_gateway(pid, seconds, profile_out)
                time.sleep(1.0)  # py-spy attaches
                asyncio.run(gateway_throughput(gateway.url, args.clients, seconds + 1, args.max_requests, "profiled"))
                _, err = spy.communicate(timeout=120)
                if spy.returncode != 0:
                    say(f"py-spy failed ({spy.returncode}): {err.decode(errors='replace')[-500:]}")
                    profile_out = None
        finally:
            celery.close()

    print_table(
        f"Submit throughput ({args.seconds:g}s per phase; the gateway and the client share this machine's "
        f"{os.cpu_count()} CPUs)",
        HEADER,
        [raw_one.row(raw_best), raw_many.row(raw_best), gw.row(raw_best), floor.row(raw_best)],
        [f"baseline = the better raw row ({raw_best.name}); target: gateway >= {TARGET_SHARE:.0%} of it -> "
         f"{'MET' if gw.per_second >= TARGET_SHARE * raw_best.per_second else 'MISSED'} "
         f"({ratio(gw.per_second, raw_best.per_second)})",
         f"target: gateway CPU per accepted job <= {TARGET_CPU:g}x a raw send_task's CPU (raw, 1 thread) -> "
         f"{'MET' if cpu_per(gw) <= TARGET_CPU * cpu_per(raw_one) else 'MISSED'} "
         f"({cpu_per(gw) / cpu_per(raw_one):.2f}x: {cpu_per(gw) * 1000:.2f} ms vs {cpu_per(raw_one) * 1000:.2f} ms)",
         "latency = one request/send, closed loop; 'CPU/req' = the gateway process's CPU time / requests (raw rows: "
         "the sending threads' own CPU time / sends)",
         "GET /healthz: the same server doing no work (uvicorn + FastAPI + middleware): the ceiling for this "
         "process on this machine"],
    )
    print_table(
        f"Latency at a fixed offered rate of {args.rate:g} req/s (open loop, {args.rate_seconds:g}s; "
        "latency from each request's scheduled send time)",
        HEADER,
        [raw_rate.row(), gw_rate.row(), *([pair_rate.row()] if pair_rate else [])],
        [f"target: gateway p99 <= {TARGET_P99 * 1000:.0f} ms -> "
         f"{'MET' if percentile(gw_rate.latencies, 99) <= TARGET_P99 else 'MISSED'}; gateway p99 / raw p99 = "
         f"{ratio(percentile(gw_rate.latencies, 99), percentile(raw_rate.latencies, 99))}; "
         f"achieved {num(gw_rate.per_second)} req/s",
         *([f"{pair_rate.name}: p99 {ms(percentile(pair_rate.latencies, 99))} -> "
            f"{'MET' if percentile(pair_rate.latencies, 99) <= TARGET_P99 else 'MISSED'} (one process per core; "
            "the load generator, Redis and the database share the same 2 cores)"] if pair_rate else [])],
    )
    print_table(
        f"Batch: {BATCH:,} jobs as single submits vs one POST /v1/jobs:batch (same gateway, same run)",
        ["phase", "jobs", "errors", "jobs/s", "wall", "CPU/job"],
        [[r.name, num(r.ok), num(sum(r.errors.values())), num(r.per_second), ms(r.seconds),
          f"{cpu_per(r) * 1000:.3f} ms"] for r in (single, batch)],
        [f"batch: {ratio(batch.per_second, single.per_second)} the jobs/s of single submits; gateway CPU per job "
         f"{ratio(cpu_per(batch), cpu_per(single))} of a single submit's"],
    )
    if traced is not None:
        tr, tr_rate, exports = traced
        print_table(
            "Tracing on vs off (the same phases against a second gateway with OTEL_EXPORTER_OTLP_ENDPOINT set; "
            "spans exported over OTLP/HTTP to a local sink)",
            HEADER,
            [gw.row(raw_best), tr.row(raw_best), gw_rate.row(), tr_rate.row()],
            [f"throughput with tracing = {ratio(tr.per_second, gw.per_second)} of without; p99 at "
             f"{args.rate:g} req/s: {ms(percentile(tr_rate.latencies, 99))} vs {ms(percentile(gw_rate.latencies, 99))}"
             f"; {exports} OTLP exports received"],
        )
        for run in (tr, tr_rate):
            if run.errors:
                print(f"  errors in {run.name}: {dict(run.errors)}")
    for run in (raw_one, raw_many, gw, floor, raw_rate, gw_rate):
        if run.errors:
            print(f"  errors in {run.name}: {dict(run.errors)}")
    p99, raw_p99 = percentile(gw_rate.latencies, 99), percentile(raw_rate.latencies, 99)
    print_table(
        "Summary: the submit-cost targets (issue 10), all figures from this run",
        ["target", "gateway", "baseline (raw Celery send_task)", "ratio", "verdict"],
        [[f"CPU per accepted job <= {TARGET_CPU:g}x raw", f"{cpu_per(gw) * 1000:.2f} ms",
          f"{cpu_per(raw_one) * 1000:.2f} ms", f"{cpu_per(gw) / cpu_per(raw_one):.2f}x",
          "MET" if cpu_per(gw) <= TARGET_CPU * cpu_per(raw_one) else "MISSED"],
         [f"p99 at {args.rate:g} req/s <= {TARGET_P99 * 1000:.0f} ms", ms(p99), ms(raw_p99), ratio(p99, raw_p99),
          "MET" if p99 <= TARGET_P99 else "MISSED"],
         [f"throughput >= {TARGET_SHARE:.0%} of raw", f"{num(gw.per_second)}/s", f"{num(raw_best.per_second)}/s",
          ratio(gw.per_second, raw_best.per_second),
          "MET" if gw.per_second >= TARGET_SHARE * raw_best.per_second else "MISSED"],
         [f"batch of {BATCH:,}: wall time", ms(batch.seconds), f"{ms(single.seconds)} ({BATCH:,} single submits)",
          ratio(batch.seconds, single.seconds), "(measured)"],
         [f"batch of {BATCH:,}: gateway CPU per job", f"{cpu_per(batch) * 1000:.3f} ms",
          f"{cpu_per(single) * 1000:.3f} ms (single submits)", ratio(cpu_per(batch), cpu_per(single)), "(measured)"]],
        ["the gateway ran with LONGRUN_MAINTENANCE=false: its periodic reaper/reconciler scan is a cost per second "
         "and per waiting job, not per submission"],
    )
    if args.profile and profile_out is not None:
        summarize_profile(profile_out)


if __name__ == "__main__":
    main()
