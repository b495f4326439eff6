"""What a SQL API key costs a request, against the `LONGRUN_API_KEYS` bootstrap key, in the same run.

  (a) in-process, per call of the gateway's Authenticator: the bootstrap key (constant-time compare against each
      configured key), a SQL key from the per-process cache (one HMAC-SHA256), and a SQL key with the cache off
      (`LONGRUN_API_KEY_CACHE_SECONDS=0`: a primary-key read per request, what an uncached design pays).
  (b) submissions through a real uvicorn gateway (`POST /v1/jobs`, N concurrent clients, closed loop), phases
      alternating between the bootstrap key and a cached SQL key on the same process, so drift hits both.

Target: a cached SQL key costs a submit no more than noise: the gateway's CPU per submit within 5% of the
bootstrap key's (CPU per request, not req/s: on a shared machine throughput swings more between rounds than that).
"""

from __future__ import annotations

import asyncio
import functools
import json
import statistics
import time
from collections.abc import Callable

import httpx
from _common import Stack, ms, num, parser, percentile, print_table, ratio, say, stack
from _submit_load import HEADER, Run, cpu_seconds
from submit_throughput import register_catalog

from longrun_common.apikeys import ApiKeyStore
from longrun_common.db import create_db_engine
from longrun_gateway.auth import Authenticator

BODY = json.dumps({"task": "demo.steps", "args": {"steps": 1}}).encode()
BOOTSTRAP = "dev-key"
TARGET_CPU_SHARE = 1.05


# --- (a) the Authenticator alone --------------------------------------------------------------------------


async def _per_call(auth: Authenticator, header: str, calls: int) -> float:
    await auth.authenticate(header)  # warm: the first SQL read fills the cache
    began = time.perf_counter()
    for _ in range(calls):
        await auth.authenticate(header)
    return (time.perf_counter() - began) / calls


def in_process(st: Stack, sql_key: str, calls: int, repeats: int) -> list[list[str]]:
    settings = st.settings
    engine = create_db_engine(settings)
    cached = Authenticator(settings, engine)
    uncached = Authenticator(settings.model_copy(update={"api_key_cache_seconds": 0.0}), engine)
    cases: list[tuple[str, Authenticator, str, int]] = [
        ("bootstrap key (LONGRUN_API_KEYS)", cached, BOOTSTRAP, calls),
        ("SQL key, cached", cached, sql_key, calls),
        ("SQL key, cache off (SQL read each time)", uncached, sql_key, max(calls // 20, 100)),
    ]
    best: dict[str, float] = {}
    try:
        for _ in range(repeats):  # interleaved repeats; the best of each is the least disturbed
            for name, auth, key, n in cases:
                cost = asyncio.run(_per_call(auth, f"Bearer {key}", n))
                best[name] = min(best.get(name, cost), cost)
    finally:
        engine.dispose()
    base = best[cases[0][0]]
    return [[name, f"{best[name] * 1e6:.1f} µs", ratio(best[name], base)] for name, *_ in cases]


# --- (b) submissions through a real gateway ---------------------------------------------------------------


async def _submits(url: str, key: str, clients: int, seconds: float, name: str) -> Run:
    run = Run(name)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=30.0) as client:
        start = time.perf_counter()
        deadline = start + seconds

        async def loop() -> None:
            while (began := time.perf_counter()) < deadline:
                try:
                    response = await client.post("/v1/jobs", content=BODY)
                except httpx.HTTPError as exc:
                    run.errors[type(exc).__name__] += 1
                    continue
                if response.status_code != 202:
                    run.errors[f"HTTP {response.status_code}"] += 1
                    continue
                run.latencies.append(time.perf_counter() - began)

        await asyncio.gather(*(loop() for _ in range(clients)))
        run.seconds = time.perf_counter() - start
    return run


def _phase(url: str, key: str, clients: int, seconds: float, name: str) -> Run:
    return asyncio.run(_submits(url, key, clients, seconds, name))


def measured(pid: int, body: Callable[[], Run]) -> Run:
    before = cpu_seconds(pid)
    run = body()
    run.cpu_seconds = cpu_seconds(pid) - before
    return run


def _cpu(run: Run) -> float:
    return run.cpu_seconds / run.ok if run.ok else float("nan")


def merge(name: str, runs: list[Run]) -> Run:
    total = Run(name)
    for run in runs:
        total.seconds += run.seconds
        total.latencies.extend(run.latencies)
        total.errors.update(run.errors)
        total.cpu_seconds = (0.0 if total.cpu_seconds != total.cpu_seconds else total.cpu_seconds) + run.cpu_seconds
    return total


def main() -> None:
    ap = parser(__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=20_000, help="Authenticator calls per in-process case")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats of the in-process cases")
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients for the submit phases")
    ap.add_argument("--seconds", type=float, default=4.0, help="length of each submit phase")
    ap.add_argument("--rounds", type=int, default=2, help="bootstrap/SQL phase pairs")
    args = ap.parse_args()

    with stack(args, name="apikeys") as st:
        register_catalog(st)
        engine = create_db_engine(st.settings)
        try:
            _, sql_key = ApiKeyStore.for_settings(engine, st.settings).create("dev", "bench")
        finally:
            engine.dispose()

        say(f"in-process: {args.calls} Authenticator calls per case, {args.repeats} repeats")
        auth_rows = in_process(st, sql_key, args.calls, args.repeats)

        say("starting the gateway")
        gateway = st.gateway()
        assert gateway.process is not None
        pid = gateway.process.pid
        say("warming up")
        for key in (BOOTSTRAP, sql_key):
            asyncio.run(_submits(gateway.url, key, 8, 1.5, "warmup"))
        phases: dict[str, list[Run]] = {"bootstrap": [], "sql": []}
        for index in range(args.rounds):
            # Alternate which goes first, so a trend over the run favours neither.
            order = [("bootstrap", BOOTSTRAP), ("sql", sql_key)]
            for label, key in order if index % 2 == 0 else reversed(order):
                say(f"round {index + 1}: {label} key, {args.clients} clients, {args.seconds:g}s")
                phase = functools.partial(_phase, gateway.url, key, args.clients, args.seconds, label)
                phases[label].append(measured(pid, phase))

    print_table(
        f"Per-request authentication cost in-process (best of {args.repeats}; database: "
        f"{'SQLite' if args.database_url is None else 'as given'})",
        ["case", "per call", "vs bootstrap"],
        auth_rows,
        ["the cached SQL key: one dict lookup, one HMAC-SHA256 and a constant-time compare; no SQL",
         "cache off: what every request would pay without the cache (one primary-key SELECT in the threadpool)"],
    )
    boot = merge(f"POST /v1/jobs, bootstrap key ({args.rounds} x {args.seconds:g}s)", phases["bootstrap"])
    sql = merge(f"POST /v1/jobs, SQL key, cached ({args.rounds} x {args.seconds:g}s)", phases["sql"])
    per_round = [
        f"round {i + 1}: bootstrap {num(b.per_second)} req/s, SQL {num(s.per_second)} req/s"
        for i, (b, s) in enumerate(zip(phases["bootstrap"], phases["sql"], strict=True))
    ]
    print_table(
        f"Submissions through one uvicorn gateway, {args.clients} clients (the gateway and the client share this "
        "machine)",
        [*HEADER[:-1], "vs bootstrap"],
        [boot.row(), sql.row(boot)],
        [f"target: SQL-key gateway CPU/req <= {TARGET_CPU_SHARE:.2f}x the bootstrap key's -> "
         f"{'MET' if _cpu(sql) <= TARGET_CPU_SHARE * _cpu(boot) else 'MISSED'} "
         f"({ratio(_cpu(sql), _cpu(boot))}); throughput {ratio(sql.per_second, boot.per_second)}; "
         f"p50 {ms(percentile(boot.latencies, 50))} vs "
         f"{ms(percentile(sql.latencies, 50))}; spread of rounds: "
         f"{statistics.pstdev([r.per_second for r in phases['bootstrap']]):.0f} / "
         f"{statistics.pstdev([r.per_second for r in phases['sql']]):.0f} req/s", *per_round],
    )
    for run in (boot, sql):
        if run.errors:
            print(f"  errors in {run.name}: {dict(run.errors)}")


if __name__ == "__main__":
    main()
