"""Plain Celery's side of bench/chaos.py: bench/_baseline_celery.py (tutorial settings) on a private broker Redis,
real `celery worker` processes, judged from a ledger Redis that is never restarted.

Not a benchmark (running this file only says so).
"""

from __future__ import annotations

import json
import sys
import uuid
from typing import Any

import redis
from _chaos_common import Kill, Outcome, Side
from _chaos_workflow import celery_expected, celery_judge, celery_submit
from _common import REPO, Stack

from tests.support.processes import Service
from tests.support.servers import RedisServer


class CelerySide(Side):
    name = "Celery (tutorial config)"

    def __init__(self, args: Any, st: Stack):
        super().__init__(args)
        self.st = st
        self.broker = RedisServer().start()
        self.ledger_server = RedisServer().start()
        self.ledger = redis.Redis.from_url(self.ledger_server.url)
        sys.path.insert(0, str(REPO))
        from bench._baseline_celery import create_app

        # A chord needs a result backend: the tutorial's, on the broker Redis (wiped with it), for the workflows.
        self.backend_url = self.broker.url if args.workflow_steps else None
        self.app = create_app(self.broker.url, self.backend_url)

    def settings_lines(self) -> list[str]:
        return [f"{self.args.workers} x `celery -A bench._baseline_celery worker --concurrency "
                f"{self.args.concurrency}` (prefork)",
                "task_acks_late=True, worker_prefetch_multiplier=1, Redis broker, default visibility timeout "
                "(3600s); everything else Celery's defaults",
                f"task sleeps {self.args.steps} x {self.args.delay:g}s; ledger in a separate Redis (never restarted)"]

    def env(self) -> dict[str, str]:
        return {"BASELINE_BROKER_URL": self.broker.url, "BASELINE_LEDGER_URL": self.ledger_server.url,
                "BASELINE_BACKEND_URL": self.backend_url or ""}

    def start_worker(self, wait: bool) -> Service:
        self.serial += 1
        argv = [sys.executable, "-m", "celery", "-A", "bench._baseline_celery", "worker", "--loglevel", "INFO",
                "--concurrency", str(self.args.concurrency), "--hostname", f"cel{self.serial}@bench"]
        service = self.st.process("celery", argv, self.env())
        if wait:
            service.wait_log("ready.", timeout=90)
        return service

    def submit_all(self) -> list[str]:
        if self.args.workflow_steps:  # first, as Longrun's
            celery_submit(self.app, self.args)
        ids = [str(uuid.uuid4()) for _ in range(self.args.jobs)]
        task = self.app.signature("baseline.steps")
        for job_id in ids:
            task.apply_async(kwargs={"job_id": job_id, "steps": self.args.steps, "delay": self.args.delay},
                             task_id=job_id)
        return ids

    def expected(self, ids: list[str]) -> int:
        return len(ids) + (celery_expected(self.args) if self.args.workflow_steps else 0)

    def done(self) -> int:
        """Completions in the ledger: jobs, workflow steps, fan-ins."""
        return int(self.ledger.scard("done_jobs"))

    def in_flight(self, host: str) -> list[tuple[str, int]]:
        return [(m.decode(), len(self.ledger.lrange(f"starts:{m.decode()}", 0, -1)))
                for m in self.ledger.smembers(f"running:{host}")]

    def restart_redis(self) -> None:
        self.broker.restart()

    def _messages_in_redis(self) -> set[str]:
        """Task ids whose message is still in the broker: queued, or unacked (redelivered after the timeout)."""
        client = redis.Redis.from_url(self.broker.url)
        try:
            ids = set()
            for raw in client.lrange("celery", 0, -1):
                ids.add(json.loads(raw)["headers"]["id"])
            for raw in client.hvals("unacked"):
                ids.add(json.loads(raw)[0]["headers"]["id"])
            return ids
        finally:
            client.close()

    def close(self) -> None:
        self.app.close()
        self.ledger.close()
        self.broker.stop()
        self.ledger_server.stop()

    def outcome(self, ids: list[str], kills: list[Kill], t0: float) -> Outcome:
        out = Outcome(self.name, self.settings_lines(), len(ids), kills=kills, t0=t0)
        waiting = self._messages_in_redis()
        pipe = self.ledger.pipeline()
        for job_id in ids:
            pipe.get(f"done:{job_id}")
            pipe.lrange(f"starts:{job_id}", 0, -1)
        raw = pipe.execute()
        starts: dict[str, list[float]] = {}
        for i, job_id in enumerate(ids):
            done = int(raw[2 * i] or 0)
            starts[job_id] = [json.loads(s)[0] for s in raw[2 * i + 1]]
            if done >= 1:
                out.succeeded += 1
            elif job_id in waiting:
                out.stranded += 1
            else:
                out.dead += 1
            if done > 1:
                out.duplicated += 1
                out.evidence.append(f"duplicated {job_id}: completed {done} times, starts {starts[job_id]}")
            if len(starts[job_id]) > 1:
                out.retried += 1
        last = self.ledger.get("last_done_at")
        if last:
            out.makespan = float(last) - t0
        done_total = self.ledger.scard("done_jobs")
        out.evidence.append(f"ledger: {done_total} distinct jobs completed; {len(waiting)} messages still in Redis")
        out.flows = celery_judge(self.ledger, self.args.workflow_steps) if self.args.workflow_steps else []
        for kill in kills:
            for job_id, started_count in kill.in_flight:
                if job_id not in starts:  # a workflow step
                    starts[job_id] = [json.loads(s)[0] for s in self.ledger.lrange(f"starts:{job_id}", 0, -1)]
                later = [ts for ts in starts[job_id][started_count:] if ts > kill.at]
                if later:
                    out.recoveries.append(later[0] - kill.at)
                    out.recovery_by_kill.setdefault(kill.host, []).append(out.recoveries[-1])
                else:
                    out.not_recovered += 1
        return out


if __name__ == "__main__":
    print("bench/_chaos_celery.py is plain Celery's side of bench/chaos.py; it is not a benchmark itself.")
