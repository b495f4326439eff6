"""Longrun's side of bench/chaos.py: jobs through JobStore (as the gateway submits), real worker processes,
judged from SQL (attempts) and every event published (across the Redis restart).

Not a benchmark (running this file only says so).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, defaultdict
from typing import Any

import redis
from _chaos_common import TERMINAL_VALUES, Kill, Outcome, Side, epoch, since
from _chaos_workflow import longrun_judge, longrun_submit
from _common import Stack
from sqlalchemy import func
from sqlmodel import Session, col, select
from submit_throughput import register_catalog

from longrun_common.jobs import JobStore
from longrun_common.models import Attempt, Job
from longrun_common.reader import Reader
from longrun_common.settings import Settings
from tests.support.jobs import close_store, make_store, submit
from tests.support.processes import Service


class LongrunSide(Side):
    name = "Longrun"

    def __init__(self, args: Any, st: Stack, gateway_url: str | None):
        super().__init__(args)
        self.st = st
        self.gateway_url = gateway_url  # workflows are submitted through it
        self.roots: dict[str, str] = {}  # workflow shape -> its root job id
        self.store: JobStore = make_store(st.settings)
        self.succeeded_events: dict[str, set[tuple[int, int]]] = defaultdict(set)  # job -> {(attempt, seq)}
        self.live: dict[str, list[tuple[int, str]]] = defaultdict(list)  # job -> (seq, status) as delivered live
        self.last_report: dict[tuple[str, int], float] = {}  # (job, attempt) -> its last event (each renews the lease)
        self.wipe: tuple[float, float] | None = None  # (Redis stopped, Redis back empty), epoch seconds
        self.active_at_wipe: dict[str, str] = {}  # job -> its SQL status just before the wipe (not ended)
        self.first_after_wipe: dict[str, float] = {}  # job -> when its first event after the wipe arrived
        self.runs_after_wipe: dict[str, float] = {}  # ... its first event saying it runs (or ended)
        self._stop = threading.Event()
        self._listener = threading.Thread(target=self._listen, name="succeeded-events", daemon=True)
        self._listener.start()

    def settings_lines(self) -> list[str]:
        s = self.st.settings
        return [f"{self.args.workers} x `python -m longrun_worker --concurrency {self.args.concurrency}`",
                f"LONGRUN_LEASE_SECONDS={s.lease_seconds:g}"
                f" ({'the default' if s.lease_seconds == Settings().lease_seconds else 'not the default'})",
                f"reaper every {s.reaper_interval:g}s (in every worker{' and the gateway' * self.args.gateway}), "
                f"leader lock {max(s.reaper_interval * 2, min(max(3.0, s.reaper_interval * 5), s.lease_seconds)):g}s, "
                f"visibility timeout {s.visibility_timeout}s, prefetch 1, acks_late, reject_on_worker_lost "
                "(defaults)",
                f"demo.steps {{steps: {self.args.steps}, delay: {self.args.delay:g}}}: retries=3 (4 attempts)",
                f"SQL: {'SQLite (temp file)' if self.st.database_url.startswith('sqlite') else 'PostgreSQL'}"]

    def start_worker(self, wait: bool) -> Service:
        self.serial += 1
        return self.st.worker("--concurrency", str(self.args.concurrency), hostname=f"lr{self.serial}@bench",
                              wait=wait)

    def submit_all(self) -> list[str]:
        if self.args.workflow_steps:  # first: their steps run while the kills and the wipe happen
            assert self.gateway_url is not None, "workflows are submitted through the gateway"
            register_catalog(self.st)  # the gateway checks a workflow's tasks against it; no worker has run yet
            self.roots = longrun_submit(self.gateway_url, self.args)
        args = {"steps": self.args.steps, "delay": self.args.delay}
        return [submit(self.store, "demo.steps", args).id for _ in range(self.args.jobs)]

    def expected(self, ids: list[str]) -> int:
        return len(ids) + len(self.roots)

    def done(self) -> int:
        """Plain jobs and workflow roots that ended (a workflow's steps and nodes have a parent)."""
        with Session(self.store.engine) as session:
            return int(session.exec(select(func.count()).select_from(Job).where(
                col(Job.status).in_(TERMINAL_VALUES), col(Job.parent_id).is_(None))).one())

    def in_flight(self, host: str) -> list[tuple[str, int]]:
        with Session(self.store.engine) as session:
            rows = session.exec(select(Job.id, Job.attempt).where(Job.status == "running", Job.worker == host))
            return [(job_id, attempt) for job_id, attempt in rows]

    def restart_redis(self) -> None:
        with Session(self.store.engine) as session:
            self.active_at_wipe = {job_id: status for job_id, status in session.exec(
                select(Job.id, Job.status).where(col(Job.status).not_in(TERMINAL_VALUES), Job.kind == "job",
                                            col(Job.waiting).is_(False)))}
        stopped = time.time()
        self.st.redis.restart()
        self.wipe = (stopped, time.time())

    def _listen(self) -> None:
        """Every `succeeded` event published, across the Redis restart (reconnects; the streams are read too)."""
        pattern = self.store.keys.channel_pattern()
        while not self._stop.is_set():
            client = redis.Redis.from_url(self.st.redis.url, socket_connect_timeout=1)
            try:
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.psubscribe(pattern)
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.2)
                    if message and message["type"] == "pmessage":
                        event = json.loads(message["data"])
                        self._note(event)
                        if self.wipe is not None:
                            self.first_after_wipe.setdefault(event["job_id"], time.time())
                            if event["status"] == "running" or event["status"] in TERMINAL_VALUES:
                                self.runs_after_wipe.setdefault(event["job_id"], time.time())
                        self.live[event["job_id"]].append((int(event["seq"]), str(event["status"])))
                        self.last_report[(event["job_id"], int(event["attempt"]))] = time.time()
            except (redis.RedisError, OSError):
                time.sleep(0.05)
            finally:
                client.close()

    def _note(self, event: dict[str, Any]) -> None:
        if event.get("status") == "succeeded" and event.get("type") == "status":
            self.succeeded_events[event["job_id"]].add((int(event["attempt"]), int(event["seq"])))

    def close(self) -> None:
        self._stop.set()
        self._listener.join(2)
        close_store(self.store)

    def outcome(self, ids: list[str], kills: list[Kill], t0: float) -> Outcome:
        out = Outcome(self.name, self.settings_lines(), len(ids), kills=kills, t0=t0)
        with Session(self.store.engine) as session:
            every = {j.id: j for j in session.exec(select(Job))}
            attempts: dict[str, list[Attempt]] = defaultdict(list)
            for row in session.exec(select(Attempt).order_by(col(Attempt.started_at))):
                attempts[row.job_id].append(row)
        jobs = {job_id: every[job_id] for job_id in ids}
        if self.wipe is not None:
            out.wiped_at = stopped = self.wipe[0]
            # A job that ended between the look at SQL and the restart has nothing left to come back from.
            active = {job_id: status for job_id, status in self.active_at_wipe.items()
                      if not (every[job_id].finished_at and epoch(every[job_id].finished_at) < stopped)}
            out.back_after_wipe = {job_id: since(self.first_after_wipe.get(job_id), stopped) for job_id in active}
            out.running_after_wipe = {job_id: since(self.runs_after_wipe.get(job_id), stopped)
                                      for job_id, status in active.items() if status == "running"}
        out.flows = longrun_judge(self.store, self.roots, self.args.workflow_steps)
        reader = Reader(self.store.keys)
        for job_id in ids:  # streams written after the Redis restart still hold every succeeded event
            for event in reader.events_after(self.store.redis, job_id, 0):
                self._note(event)
        pipe = self.store.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(self.store.keys.job(job_id), "seq")
        redis_seq = {job_id: int(raw or 0) for job_id, raw in zip(ids, pipe.execute(), strict=True)}
        # A job's hash may be gone for good (it ended before the restart: SQL alone has it then, by design);
        # a hash that exists again but numbers below what SQL recorded means seq started over from 1.
        behind = [job_id for job_id in ids if 0 < redis_seq[job_id] < jobs[job_id].seq]
        out.snapshot_gone = sum(1 for job_id in ids if redis_seq[job_id] == 0)
        out.seq_behind = len(behind)
        for job_id in behind[:3]:
            out.evidence.append(f"seq went back {job_id}: SQL jobs.seq={jobs[job_id].seq} but the Redis snapshot "
                                f"(and its stream) is at seq={redis_seq[job_id]}: its events were numbered again from "
                                "1 after the Redis restart")
        # A client (hub, long-poll) delivers only seq > the last seq it delivered. After Redis lost a job's hash
        # the publisher numbers from 1 again: count jobs where that would drop a real event (not the repeated
        # `queued` announcement) and where it would drop the terminal event itself.
        out.seq_regressed, out.terminal_hidden = 0, 0
        for job_id, seen_live in self.live.items():
            top, dropped = 0, []
            for seq, status in seen_live:
                if seq <= top and status != "queued":
                    dropped.append((seq, status))
                top = max(top, seq)
            if not dropped:
                continue
            out.seq_regressed += 1
            terminal = [d for d in dropped if d[1] in TERMINAL_VALUES]
            out.terminal_hidden += bool(terminal)
            if out.seq_regressed <= 2 or (terminal and out.terminal_hidden <= 2):
                out.evidence.append(f"seq renumbered {job_id}: live events (seq, status) in order {seen_live}; "
                                    f"a client delivering only seq > last would drop {dropped}")
        statuses = Counter(job.status for job in jobs.values())
        out.succeeded = statuses.get("succeeded", 0)
        out.stranded = sum(n for s, n in statuses.items() if s not in TERMINAL_VALUES)
        out.dead = sum(n for s, n in statuses.items() if s in TERMINAL_VALUES and s != "succeeded")
        finished = [j.finished_at for j in jobs.values() if j.status == "succeeded" and j.finished_at]
        if finished:
            out.makespan = max(epoch(f) for f in finished) - t0
        for job_id in ids:
            wins = [a for a in attempts[job_id] if a.status == "succeeded"]
            seen = self.succeeded_events.get(job_id, set())
            if len(wins) > 1 or len({a for a, _ in seen}) > 1 or len(seen) > 1:
                out.duplicated += 1
                out.evidence.append(f"duplicated {job_id}: succeeded attempts {[a.number for a in wins]}, "
                                    f"succeeded events (attempt, seq) {sorted(seen)}")
            if len(attempts[job_id]) > 1:
                out.retried += 1
        for job_id, job in jobs.items():
            if job.status not in TERMINAL_VALUES or job.status != "succeeded":
                out.evidence.append(self._describe(job, attempts[job_id]))
        for kill in kills:
            for job_id, attempt in kill.in_flight:
                later = [a for a in attempts[job_id] if a.number > attempt]
                mine = [a for a in attempts[job_id] if a.number == attempt]
                renewed = self.last_report.get((job_id, attempt))
                if renewed is not None and renewed <= kill.at:  # the lease it last renewed ran out then
                    expiry = renewed + self.st.settings.lease_seconds - kill.at
                    out.lease_expiry_by_kill.setdefault(kill.host, []).append(expiry)
                if mine and mine[0].finished_at is not None and mine[0].status != "succeeded":
                    out.detections.append(epoch(mine[0].finished_at) - kill.at)
                    out.detection_by_kill.setdefault(kill.host, []).append(out.detections[-1])
                if later:
                    out.recoveries.append(epoch(later[0].started_at) - kill.at)
                    out.recovery_by_kill.setdefault(kill.host, []).append(out.recoveries[-1])
                elif mine and mine[0].status == "succeeded":
                    out.finished_before_kill += 1  # it ended between our look and the kill
                else:
                    out.not_recovered += 1
        return out

    def _messages(self) -> dict[str, str]:
        """Celery task id -> where its message is in Redis (queue name, or `unacked` = reserved by a worker)."""
        client, where = self.store.redis, {}
        prefix = f"{self.store.keys.prefix}:celery:"
        for name in ("default", "high", "low"):
            queue = self.store.keys.queue(name)
            for raw in client.lrange(prefix + queue, 0, -1):
                where[json.loads(raw)["headers"]["id"]] = queue
        for raw in client.hvals(prefix + "unacked"):
            where[json.loads(raw)[0]["headers"]["id"]] = "unacked (reserved by a worker, not acked)"
        return where

    def _describe(self, job: Job, attempts: list[Attempt]) -> str:
        if not hasattr(self, "_where"):
            self._where = self._messages()
        message = self._where.get(f"{job.id}.{job.attempt}", "nowhere in Redis")
        receipt = f"[{job.id}.{job.attempt}] received"
        takers = [f"{self.hostname(s)} ({'killed' if s.process and s.process.poll() is not None else 'alive'})"
                  for s in self.st.services if s.name == "worker" and receipt in s.logs()]
        message += f"; received by {', '.join(takers) or 'no worker (per the worker logs)'}"
        snap = self.store.redis.hgetall(self.store.keys.job(job.id))
        fields = {k.decode(): v.decode() for k, v in snap.items()}
        history = ", ".join(f"#{a.number} {a.status} on {a.worker} "
                            f"{epoch(a.started_at):.1f}->{epoch(a.finished_at) if a.finished_at else 0:.1f}"
                            for a in attempts) or "never started"
        return (f"{job.status} {job.id}: attempt {job.attempt}/{job.max_attempts}, worker {job.worker}, "
                f"updated {epoch(job.updated_at):.1f}, error {job.error and job.error.get('type')}; attempts: "
                f"{history}; redis: status={fields.get('status')} attempt={fields.get('attempt')} "
                f"seq={fields.get('seq')}; its Celery message: {message}")


if __name__ == "__main__":
    print("bench/_chaos_longrun.py is Longrun's side of bench/chaos.py; it is not a benchmark itself.")
