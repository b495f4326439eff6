"""The worker's presence key, and its running jobs' leases given back at once after Redis lost its data.

The main process keeps `{p}:worker:{hostname}` alive. When a renewal finds the key gone (Redis restarted empty),
the worker's running jobs lost their leases too; a quiet job would only re-add its own at its next heartbeat
(lease / 3 away), so the main process re-adds them all now. That lets the reconciler give a running job without
a lease only one presence interval before reaping it (maintenance.lost_lease_grace), instead of a heartbeat
interval: a dead worker's job runs again sooner, and a live worker's job is never reaped for it.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlmodel import Session, select

from longrun_common import forkguard
from longrun_common.maintenance import presence_interval
from longrun_common.models import Job
from longrun_common.settings import Settings
from longrun_common.states import JobStatus

from .resources import Resources

log = logging.getLogger(__name__)


def announce_presence(res: Resources, settings: Settings, hostname: str) -> threading.Event:
    """Renew the presence key every presence interval while this main process lives; set the event to stop."""
    stop = threading.Event()
    ttl_ms = int(settings.lease_seconds * 1000)

    def beat() -> None:
        first = True
        while True:
            try:
                was = res.redis.set(res.keys.worker(hostname), "1", px=ttl_ms, get=True)
                if was is None and not first:  # the key vanished while we renewed it: Redis lost its data
                    restore_leases(res, settings, hostname)
                first = False
            except Exception:
                log.warning("worker presence not renewed", exc_info=True)
            if stop.wait(presence_interval(settings)):
                return

    threading.Thread(target=beat, name="longrun-presence", daemon=True).start()
    return stop


def restore_leases(res: Resources, settings: Settings, hostname: str) -> int:
    """Give every job SQL says this worker runs its lease back, unless it has one (NX: a lease that is there,
    even an expired one the reaper is about to act on, is left alone). Returns how many were restored."""
    with forkguard.held(), Session(res.engine) as session:
        running = list(session.exec(select(Job.id).where(Job.status == JobStatus.RUNNING.value,
                                                         Job.worker == hostname)))
    if not running:
        return 0
    until = time.time() + settings.lease_seconds
    restored = int(res.redis.zadd(res.keys.leases(), dict.fromkeys(running, until), nx=True))
    log.warning("Redis lost this worker's presence; restored the leases of %d of its %d running jobs",
                restored, len(running))
    return restored
