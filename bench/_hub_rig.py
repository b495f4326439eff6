"""The rig of the progress-hub benchmarks (bench/hub_*.py): a private redis-server plus the processes a benchmark
starts (the real hub, the baseline servers of bench/_hub_servers.py), all on 127.0.0.1 and free ports, all stopped
at the end; and what a benchmark measures of a process (RSS, CPU) or sets for one (RLIMIT_NOFILE, uvloop).

The other parts: bench/_hub_jobs.py (jobs and publishing), bench/_hub_clients.py (a minimal WebSocket client),
bench/_hub_servers.py (the baselines); percentiles and tables are bench/_common.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from _common import REPO, say

from longrun_common.keys import Keys
from longrun_common.settings import Settings
from tests.support.processes import Service, free_port, python_module, service_env
from tests.support.servers import RedisServer

KEY_PREFIX = "hubbench"
TENANT = "dev"
TOKEN_SECRET = "hub-bench-token-secret-0123456789abcdef"
SERVERS = Path(__file__).resolve().with_name("_hub_servers.py")


# --- process limits and memory ---------------------------------------------------------------------------------

def raise_nofile(wanted: int = 1 << 20) -> int:
    """Raise this process's soft RLIMIT_NOFILE as far as the hard limit allows; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(wanted, hard) if hard != resource.RLIM_INFINITY else wanted
    if target > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_kb(pid: int) -> int:
    """VmRSS of a process in KiB (from /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def use_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


# --- the rig ---------------------------------------------------------------------------------------------------

@dataclass
class HubRig:
    """A private Redis and the server processes of one benchmark run."""

    workdir: Path
    redis: RedisServer
    services: list[Service] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {
            "LONGRUN_REDIS_URL": self.redis.url,
            "LONGRUN_DATABASE_URL": f"sqlite:///{self.workdir / 'unused.db'}",
            "LONGRUN_KEY_PREFIX": KEY_PREFIX,
            "LONGRUN_TOKEN_SECRET": TOKEN_SECRET,
            "LONGRUN_API_KEYS": "dev:dev-key",
        }

    @property
    def settings(self) -> Settings:
        return Settings(redis_url=self.redis.url, key_prefix=KEY_PREFIX, token_secret=TOKEN_SECRET)

    @property
    def keys(self) -> Keys:
        return Keys(KEY_PREFIX)

    def _log(self, name: str) -> Path:
        index = sum(1 for s in self.services if s.name == name)
        return self.workdir / f"{name}-{index}.log"

    def hub(self, extra_env: dict[str, str] | None = None) -> Service:
        """The real hub: `python -m longrun_hub` (uvicorn) on a free port, ready on /readyz."""
        port = free_port()
        env = service_env({**self.env, "LONGRUN_HUB_PORT": str(port), **(extra_env or {})})
        service = Service("hub", python_module("longrun_hub"), env, self._log("hub"), port)
        self.services.append(service)
        service.start(ready_path="/readyz", timeout=60)
        _wait_ready(service, "/readyz")
        return service

    def traced_hub(self, snapshot_dir: Path) -> Service:
        """The hub's own `main()` under tracemalloc (`serve-hub-traced`): SIGUSR1 writes a snapshot file.
        Only to attribute memory: tracing itself costs memory and time."""
        port = free_port()
        argv = [sys.executable, str(SERVERS), "serve-hub-traced", "--port", str(port), "--redis-url", self.redis.url,
                "--snapshot-dir", str(snapshot_dir)]
        env = service_env({**self.env, "LONGRUN_HUB_PORT": str(port)})
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        service = Service("hub-traced", argv, env, self._log("hub-traced"), port)
        self.services.append(service)
        service.start(ready_path="/readyz", timeout=90)
        _wait_ready(service, "/readyz")
        return service

    def baseline(self, kind: str, *extra: str) -> Service:
        """A baseline server (`serve-poll` or `serve-bare`, bench/_hub_servers.py), as its own process."""
        port = free_port()
        argv = [sys.executable, str(SERVERS), kind, "--port", str(port), "--redis-url", self.redis.url,
                "--prefix", KEY_PREFIX, *extra]
        env = service_env({})
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        service = Service(kind, argv, env, self._log(kind), port)
        self.services.append(service)
        service.start(ready_path="/healthz", timeout=60)
        return service

    def stop(self, service: Service) -> None:
        with contextlib.suppress(Exception):
            service.stop(timeout=10)
        if service in self.services:
            self.services.remove(service)

    def stop_all(self) -> None:
        for service in reversed(list(self.services)):
            self.stop(service)


def _wait_ready(service: Service, path: str, timeout: float = 30.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(service.url + path, timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{service.name} not ready:\n{service.logs()[-3000:]}")


@contextlib.contextmanager
def rig(name: str, keep: bool = False) -> Iterator[HubRig]:
    """A private redis-server on a free port; every process started through the rig is stopped at the end."""
    workdir = Path(tempfile.mkdtemp(prefix=f"longrun-bench-{name}-"))
    server = RedisServer().start()
    running = HubRig(workdir, server)
    try:
        yield running
    finally:
        running.stop_all()
        server.stop()
        if keep:
            say(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
            shutil.rmtree(server.workdir, ignore_errors=True)


def hub_lag(url: str, transport: str = "ws") -> str:
    """The hub's own view of delivery lag (`longrun_hub_delivery_lag_seconds`: its send time - the event's ts):
    the buckets holding p50 and p99, and the share sent within 10 ms."""
    import httpx

    try:
        text = httpx.get(url + "/metrics", timeout=5).text
    except httpx.HTTPError as exc:
        return f"n/a ({exc})"
    buckets: list[tuple[float, float]] = []
    for line in text.splitlines():
        if line.startswith("longrun_hub_delivery_lag_seconds_bucket") and f'transport="{transport}"' in line:
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0.0
    if not total:
        return "n/a (no live deliveries counted)"

    def bucket_of(q: float) -> str:
        low = 0.0
        for le, count in buckets:
            if count >= q * total:
                return f"{low * 1000:g}-{le * 1000:g} ms"
            low = le
        return "?"

    within = next((count for le, count in buckets if le >= 0.01), total)
    return (f"p50 in {bucket_of(0.5)}, p99 in {bucket_of(0.99)}, {100 * within / total:.2f}% sent within 10 ms "
            f"({int(total)} live deliveries)")


def service_tail(service: Service, chars: int = 2000) -> str:
    return service.logs()[-chars:]
