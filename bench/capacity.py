"""A check of docs/SCALING.md's capacity model: 3 hubs, 4 workers and a gateway behind one private Redis.

Everything runs here, on 127.0.0.1: a private redis-server, a PostgreSQL database this script creates and drops
(SQLite when PostgreSQL does not answer: SQL writes are then not counted), one gateway, 4 workers
(`--concurrency 1` each) and 3 hub processes. Two phases, each the same procedure:

1. the workers are paused (SIGSTOP); N `demo.steps` jobs are submitted through the gateway (16 at a time);
2. M WebSocket subscribers (`/v1/ws/jobs/{id}`, the job's own stream token) spread evenly over the 3 hubs
   and the N jobs connect and receive their snapshot;
3. the workers resume (SIGCONT); the phase ends when every subscriber got its job's `end` frame.

Measured per phase, from the processes themselves: CPU seconds of the gateway, the workers (with their pool
processes), the hubs and Redis (/proc), Redis's own counters (INFO commandstats, network bytes), PostgreSQL's
(pg_stat_database: commits, rows written), event frames received by the subscribers, and the wall time of the
submit and the run.

A warm-up run of 8 jobs comes first and is not counted (first requests and jobs pay imports and connections).
The model (`predict`, the arithmetic SCALING.md uses) turns the small calibration phase's costs per unit (CPU
per submit, per job, per published event, per delivery) into the throughput of the larger check phase (4x the
jobs, 3x the subscribers per job) on the CPU the check phase actually got, and prints it next to the measured
throughput with the ratio. A ratio near 1 says the costs add up linearly as the run grows, which is what the
model's extrapolation to 10x-1,000x relies on. It is not a target (no MET/MISSED): the figures feed the doc.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis
import websockets
from _common import Stack, num, parser, print_table, ratio, say, stack

from tests.support.processes import Service, free_port, python_module, service_env

HUBS, WORKERS = 3, 4
STEPS, STEP_DELAY = 20, 0.01  # one job: 20 progress steps 10 ms apart
PG_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
HEADERS = {"Authorization": "Bearer dev-key"}


# --- the model (what docs/SCALING.md computes) -------------------------------------------------------------

@dataclass(frozen=True)
class Costs:
    """CPU seconds per unit of work, measured: the capacity model's inputs."""

    submit: float  # gateway + Redis + database server share, per accepted job (submit phase)
    job: float  # workers + Redis, per job run (its events included)
    delivery: float  # hub, per event frame delivered to one subscriber (ingest of its event included)


@dataclass(frozen=True)
class Prediction:
    submits_per_s: float
    jobs_per_s: float
    deliveries_per_s: float


def predict(costs: Costs, *, cores: float, deliveries_per_job: float) -> Prediction:
    """Throughput on `cores` fully used: a job costs `costs.job` plus one delivery per frame its subscribers
    receive; submitting costs `costs.submit`. Linear in every term (the claim the check phase tests)."""
    per_job = costs.job + costs.delivery * deliveries_per_job
    jobs = cores / per_job
    return Prediction(submits_per_s=cores / costs.submit, jobs_per_s=jobs, deliveries_per_s=jobs * deliveries_per_job)


def scaled_load(per_job: dict[str, float], jobs_per_s: float) -> dict[str, float]:
    """Per-second load on Redis / the database at `jobs_per_s`: the per-job figures times the rate."""
    return {name: value * jobs_per_s for name, value in per_job.items()}


# --- measuring ---------------------------------------------------------------------------------------------

def _cpu_of(pid: int) -> float:
    """CPU seconds of a process and every descendant still alive (utime + stime, /proc)."""
    children: dict[int, list[int]] = {}
    stats: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
            stats[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += stats.get(current, 0.0)
        todo += children.get(current, [])
    return total


@dataclass
class Snapshot:
    cpu: dict[str, float]
    commands: dict[str, int]
    net_in: int
    net_out: int
    sql: dict[str, int]
    at: float = field(default_factory=time.monotonic)


@dataclass
class Rig:
    stack: Stack
    gateway: Service
    hubs: list[Service]
    workers: list[Service]
    sql_name: str | None  # the PostgreSQL database's name, for pg_stat_database

    def pids(self) -> dict[str, list[int]]:
        def of(services: list[Service]) -> list[int]:
            return [s.process.pid for s in services if s.process is not None]
        server = self.stack.redis.process
        return {"gateway": of([self.gateway]), "workers": of(self.workers), "hubs": of(self.hubs),
                "redis": [server.pid] if server is not None else []}

    def snapshot(self) -> Snapshot:
        cpu = {name: sum(_cpu_of(pid) for pid in pids) for name, pids in self.pids().items()}
        client = redis.Redis.from_url(self.stack.redis.url)
        stats = client.info("commandstats")
        net = client.info("stats")
        client.close()
        commands = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
        sql: dict[str, int] = {}
        if self.sql_name is not None:
            with psycopg.connect(PG_SERVER, autocommit=True) as conn:
                conn.execute("SELECT pg_stat_force_next_flush()")
                row = conn.execute("SELECT xact_commit, tup_inserted, tup_updated, tup_deleted FROM "
                                   "pg_stat_database WHERE datname = %s", (self.sql_name,)).fetchone()
            if row is not None:
                sql = dict(zip(("commits", "inserted", "updated", "deleted"), map(int, row), strict=True))
        return Snapshot(cpu, commands, int(net["total_net_input_bytes"]), int(net["total_net_output_bytes"]), sql)

    def pause_workers(self, paused: bool) -> None:
        for worker in self.workers:
            if worker.process is not None:
                os.killpg(worker.process.pid, signal.SIGSTOP if paused else signal.SIGCONT)


@dataclass
class Phase:
    jobs: int
    subscribers: int
    submit_seconds: float
    run_seconds: float
    frames: int
    submit_cpu: dict[str, float]
    run_cpu: dict[str, float]
    commands: dict[str, int]
    net_in: int
    net_out: int
    sql: dict[str, int]

    @property
    def publishes(self) -> int:
        return self.commands.get("publish", 0)

    def costs(self) -> Costs:
        submit = sum(self.submit_cpu.values()) / self.jobs
        job = (self.run_cpu["workers"] + self.run_cpu["redis"] + self.run_cpu["gateway"]) / self.jobs
        return Costs(submit=submit, job=job, delivery=self.run_cpu["hubs"] / max(self.frames, 1))


def _delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0)}


async def _submit(gateway: str, count: int) -> list[dict[str, Any]]:
    body = {"task": "demo.steps", "args": {"steps": STEPS, "delay": STEP_DELAY}}
    # Connections expire here before uvicorn's 5 s keep-alive closes them (no request on a closing one).
    limits = httpx.Limits(keepalive_expiry=2.0)
    async with httpx.AsyncClient(base_url=gateway, timeout=30, limits=limits) as client:
        slots = asyncio.Semaphore(16)

        async def one() -> dict[str, Any]:
            async with slots:
                response = await client.post("/v1/jobs", json=body, headers=HEADERS)
                response.raise_for_status()
                return response.json()  # type: ignore[no-any-return]

        return list(await asyncio.gather(*(one() for _ in range(count))))


async def _subscribe(hub: str, job: dict[str, Any], connected: asyncio.Event, done: asyncio.Event,
                     frames: list[int], ready: list[int], total: int) -> None:
    url = f"ws://{hub}/v1/ws/jobs/{job['id']}?token={job['stream']['token']}"
    async with websockets.connect(url, compression=None, max_queue=None) as socket:
        await socket.recv()  # the snapshot: subscribed
        ready[0] += 1
        if ready[0] == total:
            connected.set()
        async for message in socket:
            text = message if isinstance(message, str) else message.decode()
            if text.startswith('{"seq":'):
                frames[0] += 1
            elif json.loads(text).get("type") == "end":
                break
    done.set()


async def run_phase(rig: Rig, jobs: int, per_job: int, limit: float) -> Phase:
    rig.pause_workers(True)
    start = rig.snapshot()
    submitted = await _submit(rig.gateway.url, jobs)
    after_submit = rig.snapshot()
    hubs = [h.url.removeprefix("http://") for h in rig.hubs]
    connected, frames, ready = asyncio.Event(), [0], [0]
    finished: list[asyncio.Event] = []
    tasks = []
    for i in range(jobs * per_job):
        done = asyncio.Event()
        finished.append(done)
        # A job's subscribers on different hubs (round robin), as behind a load balancer: every hub with
        # one of them ingests the job's events.
        tasks.append(asyncio.create_task(_subscribe(hubs[i % len(hubs)], submitted[i // per_job], connected, done,
                                                    frames, ready, jobs * per_job)))
    await asyncio.wait_for(connected.wait(), limit)
    before_run = rig.snapshot()
    rig.pause_workers(False)
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), limit)
    finally:
        for task in tasks:
            task.cancel()
    end = rig.snapshot()
    return Phase(
        jobs=jobs, subscribers=jobs * per_job, submit_seconds=after_submit.at - start.at,
        run_seconds=end.at - before_run.at, frames=frames[0],
        submit_cpu=_delta(after_submit.cpu, start.cpu), run_cpu=_delta(end.cpu, before_run.cpu),
        commands=_delta(end.commands, start.commands), net_in=end.net_in - start.net_in,
        net_out=end.net_out - start.net_out, sql=_delta(end.sql, start.sql),
    )


def start_hub(s: Stack) -> Service:
    port = free_port()
    env = service_env({**s.env, "LONGRUN_HUB_PORT": str(port)})
    service = Service("hub", python_module("longrun_hub"), env, s.workdir / f"hub-{port}.log", port)
    s.services.append(service)
    service.start(ready_path="/readyz", timeout=120)
    return service


def _pg_database() -> str | None:
    try:
        with psycopg.connect(PG_SERVER, connect_timeout=2):
            return f"postgresql://postgres@127.0.0.1:5432/longrun_capacity_{os.getpid()}"
    except psycopg.Error:
        return None


def report(cal: Phase, check: Phase) -> None:
    costs = cal.costs()
    run_cores = sum(check.run_cpu.values()) / check.run_seconds
    submit_cores = sum(check.submit_cpu.values()) / check.submit_seconds
    per_job = check.frames / check.jobs
    run = predict(costs, cores=run_cores, deliveries_per_job=per_job)
    submit = predict(costs, cores=submit_cores, deliveries_per_job=per_job)
    measured = {"submits/s": check.jobs / check.submit_seconds, "jobs/s": check.jobs / check.run_seconds,
                "deliveries/s": check.frames / check.run_seconds}
    predicted = {"submits/s": submit.submits_per_s, "jobs/s": run.jobs_per_s, "deliveries/s": run.deliveries_per_s}
    print()
    print(f"calibration: {cal.jobs} jobs, {cal.subscribers} subscribers; check: {check.jobs} jobs, "
          f"{check.subscribers} subscribers over {HUBS} hubs, {WORKERS} workers, 1 gateway, one Redis")
    print(f"measured costs (calibration): {costs.submit * 1000:.2f} ms CPU per submit, {costs.job * 1000:.2f} ms "
          f"CPU per job run (workers + Redis + gateway), {costs.delivery * 1e6:.1f} us hub CPU per delivery")
    print(f"CPU the check phase got: {submit_cores:.2f} cores while submitting, {run_cores:.2f} while running "
          f"(this machine: {os.cpu_count()} cores, shared)")
    print_table("Capacity model vs measured (check phase)", ["throughput", "model", "measured", "measured/model"],
                [[k, num(predicted[k], 1), num(measured[k], 1), ratio(measured[k], predicted[k])] for k in measured])
    for phase, name in ((cal, "calibration"), (check, "check")):
        top = sorted(phase.commands.items(), key=lambda kv: -kv[1])[:8]
        print(f"{name} per job: " + ", ".join(f"{k} {v / phase.jobs:.1f}" for k, v in top)
              + f"; Redis commands {sum(phase.commands.values()) / phase.jobs:.1f}, bytes in "
              f"{phase.net_in / phase.jobs:.0f}, out {phase.net_out / phase.jobs:.0f}; published events "
              f"{phase.publishes / phase.jobs:.1f}; frames delivered {phase.frames / phase.jobs:.1f}; SQL "
              + (", ".join(f"{k} {v / phase.jobs:.1f}" for k, v in phase.sql.items()) or "not counted (SQLite)"))
        print(f"{name} CPU seconds: submit " + ", ".join(f"{k} {v:.2f}" for k, v in phase.submit_cpu.items())
              + "; run " + ", ".join(f"{k} {v:.2f}" for k, v in phase.run_cpu.items())
              + f"; submit {phase.submit_seconds:.2f}s, run {phase.run_seconds:.2f}s")


def main() -> None:
    ap = parser(__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=200, help="jobs in the check phase (calibration: a quarter)")
    ap.add_argument("--subscribers-per-job", type=int, default=3, help="check phase (calibration: 1)")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds a phase may take at most")
    args = ap.parse_args()
    if args.database_url is None:
        args.database_url = _pg_database()
    sql_name = args.database_url.rsplit("/", 1)[1] if args.database_url else None
    with stack(args, name="capacity") as s:
        say(f"starting 1 gateway, {WORKERS} workers, {HUBS} hubs on one Redis")
        # All at once: each process spends most of its start importing, which overlaps well.
        workers = [s.worker("--concurrency", "1", wait=False) for _ in range(WORKERS)]
        with ThreadPoolExecutor(HUBS + 1) as pool:
            started = [pool.submit(s.gateway, timeout=120.0)] + [pool.submit(start_hub, s) for _ in range(HUBS)]
            gateway, *hubs = [future.result() for future in started]
        for worker in workers:
            worker.wait_log("ready.", timeout=120)
        rig = Rig(s, gateway, hubs, workers, sql_name)
        say("warm-up (first requests and jobs import and connect; not counted)")
        asyncio.run(run_phase(rig, 8, 1, args.timeout))
        say("calibration phase")
        cal = asyncio.run(run_phase(rig, max(args.jobs // 4, 8), 1, args.timeout))
        say("check phase")
        check = asyncio.run(run_phase(rig, args.jobs, args.subscribers_per_job,
                                      args.timeout))
    report(cal, check)


if __name__ == "__main__":
    main()
