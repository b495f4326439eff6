"""Redis key names: every key Longrun writes is built here, under one prefix."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    """Key builder for one prefix (tests use a fresh prefix each)."""

    prefix: str = "longrun"

    def job(self, job_id: str) -> str:
        """Hash: the job's latest snapshot (seq, status, progress, attempt, ...)."""
        return f"{self.prefix}:job:{job_id}"

    def stream(self, job_id: str) -> str:
        """Stream: the job's events, entry id `{seq}-0`, bounded for replay."""
        return f"{self.prefix}:job:{job_id}:events"

    def channel(self, job_id: str) -> str:
        """Pub/sub channel: live delivery of the job's events."""
        return f"{self.prefix}:live:{job_id}"

    def channel_pattern(self) -> str:
        """Every job's live channel (for tools that watch all jobs, such as benchmarks)."""
        return f"{self.prefix}:live:*"

    def rollup(self, job_id: str) -> str:
        """Hash: a workflow node's progress sums over its children (rollup.py builds the same name in Lua)."""
        return f"{self.prefix}:rollup:{job_id}"

    def leases(self) -> str:
        """Sorted set: running job id -> lease expiry (epoch seconds)."""
        return f"{self.prefix}:leases"

    def worker(self, hostname: str) -> str:
        """String with a TTL: present while the worker's main process is alive."""
        return f"{self.prefix}:worker:{hostname}"

    def lock(self, name: str) -> str:
        """A leader lock (reaper, reconciler): one holder across all replicas."""
        return f"{self.prefix}:lock:{name}"

    def queue(self, name: str) -> str:
        """The Celery queue name for a Longrun queue (prefixed so test runs never share queues)."""
        return f"{self.prefix}.{name}"
