"""Chaos: jobs while a worker is killed -9 every few seconds and Redis is restarted once; Longrun vs plain Celery.

Each side runs the same schedule on its own private Redis: all jobs submitted, then 3 workers (N processes each)
started; from t0, when they are ready, every `--kill-every` seconds during the chaos window one worker's
whole process group gets SIGKILL (only while another worker is ready) and a replacement starts at once; at
`--redis-restart-at` (half a second after the second kill) the broker Redis is restarted without persistence
(it comes back empty). Then a bounded wait.

Longrun: `demo.steps` jobs ({"steps", "delay"}) submitted through JobStore (as the gateway does), real
`python -m longrun_worker` processes and one gateway (never killed: the reaper runs there too, as deployed;
`--no-gateway` leaves it out), Longrun's defaults (`--lease-seconds` changes the lease).
Baseline: bench/_baseline_celery.py (tutorial settings: acks_late, prefetch 1, Redis broker, default visibility
timeout), a task sleeping the same steps, run by real `celery -A bench._baseline_celery worker` processes;
it records starts and completions in a separate ledger Redis that is never restarted.

Reported per side: lost (never succeeded), of those stranded (not terminal: Longrun queued/running/retrying;
Celery: the message still sits in Redis and would run only after the visibility timeout) and dead (gone: Longrun
failed/cancelled; Celery: the message no longer exists anywhere), duplicated (ran to completion more than once),
and the recovery time: from a kill to each job the killed worker was running starting again; Longrun also the
time from the Redis wipe until each job not ended then is back (re-queued, running, or ended). The issue-10
targets are printed as MET/MISSED: kill -> running again p90 <= lease + 3 s; everything back <= 30 s after the
wipe.

Workflows (issue 11, `--workflow-steps 0` leaves them out): before the jobs, each side submits a chain (a group of
N long steps, then a fan-in) and a chord (the same), which the same kills and wipe then hit; reported per side:
ended succeeded, every step completed exactly once, the fan-in ran once with all N inputs (bench/_chaos_workflow.py).
The modules: _chaos_common (a side's interface, kills, outcomes), _chaos_longrun, _chaos_celery, _chaos_workflow.
"""


from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from _chaos_celery import CelerySide
from _chaos_common import RECOVERY_SLACK, WIPE_BOUND, Kill, Outcome, Side, safe, spread, wipe_spread
from _chaos_longrun import LongrunSide
from _chaos_workflow import SHAPES
from _common import num, parser, percentile, print_table, say, stack

from longrun_common.settings import Settings
from tests.support.processes import Service

# --- the schedule ----------------------------------------------------------------------------------------------

def run_side(side: Side, args: Any) -> Outcome:
    spawned: dict[int, float] = {}  # id(service) -> when it was started
    ready_after: list[float] = []  # seconds from spawn to "ready." for every worker that got there

    def spawn() -> Service:
        service = side.start_worker(wait=False)
        spawned[id(service)] = time.time()
        return service

    def is_ready(service: Service) -> bool:
        if id(service) in spawned and "ready." in service.logs():
            ready_after.append(time.time() - spawned.pop(id(service)))
        return id(service) not in spawned

    # Every job is accepted before the workers start, so the kills and the wipe find them busy however slow the
    # submission is on a loaded machine; the clock (t0) starts when the workers are ready.
    say(f"{side.name}: submitting {args.jobs} jobs")
    submitting = time.time()
    ids = side.submit_all()
    say(f"{side.name}: submitted in {time.time() - submitting:.1f}s; starting {args.workers} workers")
    for _ in range(args.workers):
        side.workers.append(spawn())
    for worker in side.workers:
        worker.wait_log("ready.", timeout=120)
        is_ready(worker)
    t0 = start = time.time()
    say(f"{side.name}: workers ready; chaos for {args.chaos_seconds:g}s")
    kills: list[Kill] = []
    next_kill = start + args.kill_every
    chaos_end = start + args.chaos_seconds
    restart_at = start + args.redis_restart_at
    restarted = False
    deadline = start + args.timeout
    last_done, last_change = -1, time.time()
    while True:
        now = time.time()
        done = safe(side.done, last_done)
        if done != last_done:
            last_done, last_change = done, now
        if done >= side.expected(ids):
            break
        if now >= deadline:
            say(f"{side.name}: deadline ({args.timeout:g}s) reached with {done}/{side.expected(ids)} done")
            break
        if now > chaos_end and now - max(last_change, chaos_end) > args.settle:
            say(f"{side.name}: nothing finished for {args.settle:g}s after the chaos window; stopping the wait")
            break
        if not restarted and now >= restart_at:
            say(f"{side.name}: restarting Redis (no persistence) at t+{now - t0:.1f}s; "
                f"{done}/{side.expected(ids)} done")
            side.restart_redis()
            restarted = True
        ready = [i for i, w in enumerate(side.workers) if is_ready(w)]
        # Kill only while another worker is ready to take the victim's jobs: the recovery measured is the
        # system's, not a replacement worker's boot (reported on its own: worker start -> ready).
        if now >= next_kill and now <= chaos_end and len(ready) >= 2:
            index = ready[0]  # the oldest ready worker: the one most likely to be running jobs
            worker = side.workers[index]
            host = side.hostname(worker)
            in_flight = safe(lambda h=host: side.in_flight(h), [])
            worker.kill()
            kills.append(Kill(time.time(), host, in_flight))
            say(f"{side.name}: t+{now - t0:.1f}s kill -9 {host} (running {len(in_flight)}); replacing it; "
                f"{done}/{side.expected(ids)} done")
            del side.workers[index]
            side.workers.append(spawn())
            next_kill += args.kill_every
        time.sleep(0.2)
    say(f"{side.name}: {last_done}/{side.expected(ids)} done at t+{time.time() - t0:.1f}s; judging")
    out = side.outcome(ids, kills, t0)
    out.ready_after = ready_after
    return out


def verdicts(o: Outcome, lease: float) -> list[str]:
    """The issue-10 targets for Longrun: kill -> running again p90 <= lease + 3 s; after a Redis restart without
    persistence, every accepted job back (and every job that was running, running again) within 30 s."""
    lines = []
    bound = lease + RECOVERY_SLACK
    p90 = percentile(o.recoveries, 90)
    met = bool(o.recoveries) and p90 <= bound and o.not_recovered == 0
    lines.append(f"target: kill -> running again p90 <= lease + {RECOVERY_SLACK:g} s = {bound:g} s -> "
                 f"{'MET' if met else 'MISSED'} (p90 {p90:.1f} s over {len(o.recoveries)} jobs, "
                 f"{o.not_recovered} not recovered)")
    for label, after in (("every job not ended at the wipe back (re-queued, running or ended)", o.back_after_wipe),
                         ("every job running at the wipe running again", o.running_after_wipe)):
        if after is None:
            lines.append(f"target: {label} <= {WIPE_BOUND:g} s -> MISSED (Redis was never restarted)")
            continue
        times = [v for v in after.values() if v is not None]
        met = len(times) == len(after) and max(times, default=0.0) <= WIPE_BOUND
        lines.append(f"target: Redis wipe -> {label} <= {WIPE_BOUND:g} s -> {'MET' if met else 'MISSED'} "
                     f"(max {max(times, default=0.0):.1f} s over {len(after)} jobs; "
                     f"{len(after) - len(times)} never seen again)")
    for flow in o.flows:
        lines.append(f"target (issue 11): the {flow.shape} workflow ends succeeded, every step completed exactly "
                     f"once, the fan-in ran once with all inputs -> {'MET' if flow.intact else 'MISSED'}")
    return lines


def flow_rows(outcomes: list[Outcome]) -> list[list[str]]:
    """Per workflow shape: how it ended, its steps' completions, and its fan-in, side by side."""
    rows = []
    for index, shape in enumerate(SHAPES):
        flows = [o.flows[index] if len(o.flows) > index else None for o in outcomes]
        if not any(flows):
            continue
        rows += [[f"workflow {shape}: ended", *(f.status if f else "n/a" for f in flows)],
                 ["  steps completed once / never / twice+", *(
                     f"{f.completed_once} / {len(f.never_completed)} / {len(f.completed_twice)} of {f.steps}"
                     if f else "n/a" for f in flows)],
                 ["  steps started more than once", *(num(f.restarted) if f else "n/a" for f in flows)],
                 ["  fan-in runs, inputs received", *(
                     f"{f.fan_in_runs}, {'-' if f.fan_in_inputs is None else f.fan_in_inputs}/{f.steps}"
                     if f else "n/a" for f in flows)]]
    return rows


def report(outcomes: list[Outcome], args: Any, lease: float) -> None:
    def dist(o: Outcome, r: list[float] | None = None) -> str:
        return spread(o.recoveries if r is None else r)

    rows = [
        ["jobs", *(num(o.jobs) for o in outcomes)],
        ["succeeded", *(num(o.succeeded) for o in outcomes)],
        ["lost (never succeeded)", *(num(o.lost) for o in outcomes)],
        ["  stranded (not terminal)", *(num(o.stranded) for o in outcomes)],
        ["  dead (terminal, not succeeded / gone)", *(num(o.dead) for o in outcomes)],
        ["duplicated (completed > once)", *(num(o.duplicated) for o in outcomes)],
        ["jobs started more than once", *(num(o.retried) for o in outcomes)],
        ["time to last success", *(f"{o.makespan:.1f} s" for o in outcomes)],
        ["worker kills (-9, process group)", *(num(len(o.kills)) for o in outcomes)],
        ["jobs running on killed workers", *(num(sum(len(k.in_flight) for k in o.kills)) for o in outcomes)],
        ["  recovered (ran again)", *(num(len(o.recoveries)) for o in outcomes)],
        ["  not recovered by the end", *(num(o.not_recovered) for o in outcomes)],
        ["kill -> job requeued p50 / p90 / max", *(dist(o, o.detections) for o in outcomes)],
        ["kill -> job running again p50/p90/max", *(dist(o) for o in outcomes)],
        ["Redis wipe -> job back: jobs, p50/p90/max", *(wipe_spread(o.back_after_wipe) for o in outcomes)],
        ["  running at the wipe -> running again", *(wipe_spread(o.running_after_wipe) for o in outcomes)],
        ["seq lower in Redis than in SQL at the end", *("n/a" if o.seq_behind is None else num(o.seq_behind)
                                                      for o in outcomes)],
        ["jobs with live events a seq client drops", *("n/a" if o.seq_regressed is None else num(o.seq_regressed)
                                               for o in outcomes)],
        ["  terminal event at an already-seen seq", *("n/a" if o.terminal_hidden is None else num(o.terminal_hidden)
                                                      for o in outcomes)],
        ["no Redis snapshot/events left at the end", *("n/a" if o.snapshot_gone is None else num(o.snapshot_gone)
                                                      for o in outcomes)],
        ["worker start -> ready p50 / max", *(f"{percentile(o.ready_after, 50):.1f} s / {max(o.ready_after):.1f} s"
                                              for o in outcomes)],
        *flow_rows(outcomes),
    ]
    print_table(
        f"Chaos: {args.jobs} jobs, kill -9 a worker every {args.kill_every:g}s for {args.chaos_seconds:g}s "
        f"(a replacement starts at once), Redis restarted empty at t+{args.redis_restart_at:g}s",
        ["", *(o.side for o in outcomes)],
        rows,
        ["recovery = from the kill until the killed worker's job started running again (next attempt/delivery)",
         "the victim is the oldest worker that is ready (a worker still starting is never killed); a kill is "
         "skipped while no worker is ready",
         f"wait bounded: all done, or {args.settle:g}s without a completion after the chaos window, or "
         f"{args.timeout:g}s",
         "Redis wipe -> back = from the restart until the job's first event after it (Longrun re-queues, renews "
         "or restarts it); Celery keeps no record to rebuild from (its losses are counted above)",
         *(line for o in outcomes if o.side == LongrunSide.name for line in verdicts(o, lease))],
    )
    for o in outcomes:
        print(f"\n{o.side} settings:")
        for line in o.settings:
            print(f"  {line}")
    for o in outcomes:
        if o.kills:
            print(f"\n{o.side} kills (t = seconds after t0; for each job the killed worker was running: "
                  "lease ran out / requeued / running again, after):")
            for k in o.kills:
                expired = ", ".join(f"{r:.1f}s" for r in o.lease_expiry_by_kill.get(k.host, [])) or "-"
                requeued = ", ".join(f"{r:.1f}s" for r in o.detection_by_kill.get(k.host, [])) or "-"
                again = ", ".join(f"{r:.1f}s" for r in o.recovery_by_kill.get(k.host, [])) or "-"
                print(f"  t+{k.at - o.t0:5.1f}s {k.host:>12}: {len(k.in_flight)} running; "
                      + (f"last lease ran out after {expired}; " if o.lease_expiry_by_kill else "")
                      + f"requeued after {requeued}; running again after {again}")
    for o in outcomes:
        for flow in o.flows:
            print(f"\n{o.side} workflow {flow.shape}: {flow.summary()}")
            for step in [*flow.never_completed, *flow.completed_twice][: args.evidence]:
                print(f"  {step}")
    for o in outcomes:
        if o.evidence:
            print(f"\n{o.side} evidence ({len(o.evidence)}):")
            for line in o.evidence[: args.evidence]:
                print(f"  {line}")
            if len(o.evidence) > args.evidence:
                print(f"  ... {len(o.evidence) - args.evidence} more")
    sys.stdout.flush()


def main() -> None:
    ap = parser(__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=500, help="jobs per side")
    # 1 s jobs: the work outlasts the chaos window, so every kill and the wipe find the workers busy.
    ap.add_argument("--steps", type=int, default=10, help="steps per job")
    ap.add_argument("--delay", type=float, default=0.1, help="seconds per step")
    ap.add_argument("--workers", type=int, default=3, help="workers kept up (each killed in turn)")
    ap.add_argument("--concurrency", type=int, default=4, help="processes per worker")
    ap.add_argument("--kill-every", type=float, default=5.0, help="seconds between kills")
    ap.add_argument("--chaos-seconds", type=float, default=30.0,
                    help="kills happen during this window after t0 (workers ready)")
    # Half a second after the second kill: that worker's leases are wiped with Redis (the hardest case).
    ap.add_argument("--redis-restart-at", type=float, default=10.5,
                    help="restart Redis (empty) at t0 + this")
    ap.add_argument("--lease-seconds", type=float, default=None,
                    help="LONGRUN_LEASE_SECONDS for Longrun's side (default: Longrun's default)")
    ap.add_argument("--settle", type=float, default=20.0,
                    help="after the chaos window, stop waiting when nothing finished for this long")
    ap.add_argument("--timeout", type=float, default=150.0,
                    help="hard limit per side, seconds after t0")
    ap.add_argument("--evidence", type=int, default=15, help="lines of evidence to print per side")
    ap.add_argument("--gateway", action=argparse.BooleanOptionalAction, default=True,
                    help="run a gateway next to Longrun's workers, as deployed (its reaper is never killed)")
    ap.add_argument("--only", choices=["longrun", "celery"], default=None, help="run one side only")
    # 4 of 12 s: the first kill and the wipe find them running, and they leave most processes to the jobs (8 would
    # fill 8 of the 12 and hold back every requeued job behind a 12 s step once two workers are down).
    ap.add_argument("--workflow-steps", type=int, default=4,
                    help="steps in each workflow's group (a chain and a chord, submitted first); 0: no workflows")
    ap.add_argument("--workflow-step-seconds", type=float, default=12.0,
                    help="how long each workflow step runs (long enough that the kills and the wipe find them)")
    args = ap.parse_args()
    if args.workflow_steps and not args.gateway and args.only != "celery":
        ap.error("Longrun's workflows are submitted through the gateway: drop --no-gateway or add --workflow-steps 0")

    outcomes = []
    lease = args.lease_seconds or Settings().lease_seconds
    env = {"LONGRUN_LEASE_SECONDS": f"{lease:g}"}
    with stack(args, name="chaos", extra_env=env) as st:
        if args.only != "celery":
            # As deployed: the reaper runs in the gateway too, so it outlives the workers being killed.
            gateway = st.gateway() if args.gateway else None
            longrun = LongrunSide(args, st, gateway.url if gateway else None)
            try:
                outcomes.append(run_side(longrun, args))
            finally:
                st.stop()
                longrun.close()
        if args.only != "longrun":
            baseline = CelerySide(args, st)
            try:
                outcomes.append(run_side(baseline, args))
            finally:
                st.stop()
                baseline.close()
    report(outcomes, args, lease)


if __name__ == "__main__":
    main()
