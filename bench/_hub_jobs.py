"""Jobs for the progress-hub benchmarks, set up and published through the real `longrun_common.publisher.Publisher`
(the only writer of events), as the gateway and a worker's reporter would."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from typing import Any

from _common import paced, percentile
from _hub_rig import KEY_PREFIX, TENANT, TOKEN_SECRET

from longrun_common.events import Progress
from longrun_common.keys import Keys
from longrun_common.publisher import EventSpec, Publisher
from longrun_common.states import JobStatus
from longrun_common.tokens import mint


def new_job_ids(count: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(count)]


def token_for(job_id: str | None, ttl: int = 3600) -> str:
    return mint(TOKEN_SECRET, TENANT, job_id, ttl)[0]


def make_publisher() -> Publisher:
    return Publisher(Keys(KEY_PREFIX), stream_maxlen=1000, event_ttl_seconds=3600)


def announce_jobs(redis_url: str, job_ids: list[str]) -> dict[str, int]:
    """Publish `queued` (with the hash's creation fields, as JobStore.announce does) and `running` for each job.
    Returns the seq of the last event of each job."""
    import redis

    client = redis.Redis.from_url(redis_url)
    publisher = make_publisher()
    seqs = {}
    created = repr(time.time())
    fields = {"tenant": TENANT, "task": "bench.hub", "queue": "default", "priority": "0", "max_attempts": "1",
              "created_at": created}
    for job_id in job_ids:
        publisher.publish(client, EventSpec(job_id, "status", JobStatus.QUEUED, 1, fields=fields))
        seqs[job_id] = publisher.publish(
            client, EventSpec(job_id, "status", JobStatus.RUNNING, 1, fields={"started_at": created})
        ).seq
    client.close()
    return seqs


def progress_spec(job_id: str, i: int, total: int) -> EventSpec:
    """One progress event as a worker's reporter publishes it (ts stamped by the Publisher at publish time)."""
    progress = Progress(current=i, total=total, percent=round(100.0 * i / total, 2), stage="bench",
                        message=f"step {i}/{total}")
    return EventSpec(job_id, "progress", JobStatus.RUNNING, 1, progress=progress)


def finish_jobs(redis_url: str, job_ids: list[str]) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    publisher = make_publisher()
    for job_id in job_ids:
        publisher.publish(client, EventSpec(job_id, "status", JobStatus.SUCCEEDED, 1, result={"ok": True},
                                            progress=Progress(percent=100.0)))
    client.close()


def paced_publisher(redis_url: str, job_ids: list[str], rate_per_job: float, events_per_job: int,
                    start_at: float, out: Any) -> None:
    """Child process: publish `events_per_job` progress events to every job, `rate_per_job` events/s each,
    interleaved evenly over the jobs (total rate = jobs x rate), starting at wall time `start_at`.
    Puts {job_id: [(seq, ts), ...]} and the pacing error on `out`."""
    import redis

    client = redis.Redis.from_url(redis_url)
    publisher = make_publisher()
    total_rate = rate_per_job * len(job_ids)
    sent: dict[str, list[tuple[int, float]]] = {j: [] for j in job_ids}
    late = []
    count = events_per_job * len(job_ids)
    while time.time() < start_at:
        time.sleep(0.001)
    began = time.time()
    for n, due in paced(total_rate, count):
        late.append(time.perf_counter() - due)
        job_id = job_ids[n % len(job_ids)]
        ts = time.time()
        spec = replace(progress_spec(job_id, n // len(job_ids) + 1, events_per_job), ts=ts)
        seq = publisher.publish(client, spec).seq
        sent[job_id].append((seq, ts))
    client.close()
    out.put({"sent": sent, "began": began, "seconds": time.time() - began, "late_p99": percentile(late, 99)})
