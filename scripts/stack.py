"""Run Longrun's services in the foreground, each line prefixed with its service: what `make up` runs.

    python scripts/stack.py                  # gateway, hub, one worker and Flower (`make up`)
    python scripts/stack.py hub              # one service (`make gateway|hub|worker|flower`)
    python scripts/stack.py worker -- -c 4   # after `--`: options for the Celery worker
    python scripts/stack.py worker --queues reports,default   # a worker for some queues (`make worker QUEUES=…`)

It migrates the database, starts the services (each in its own session, so a Ctrl-C reaches them only through
this supervisor), prints where each listens once it answers, and on Ctrl-C / SIGTERM / SIGHUP stops them all:
SIGTERM to each process group, SIGKILL after a grace period (or at a second Ctrl-C), then a SIGKILL sweep of
every group so that no pool process outlives it. If one service dies, the others are stopped too.
Settings come from LONGRUN_* variables; Flower listens on FLOWER_PORT (default 5555). Run it with the project's
environment (`uv run python scripts/stack.py`).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from longrun_common.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
ORDER = ("gateway", "hub", "worker", "flower")
FLOWER_APP = "longrun_worker.entry:app"  # the Longrun app: Flower then knows the broker's global_keyprefix
COLORS = {"gateway": "36", "hub": "35", "worker": "33", "flower": "32", "stack": "1"}
READY_TIMEOUT = 90.0


@dataclass
class Plan:
    """What to start for one service, and how to tell that it is ready."""

    name: str
    argv: list[str]
    url: str | None = None  # HTTP base URL, for the ready check and the banner
    ready_path: str | None = None
    ready_line: str | None = None  # or: a text in its output
    port: int | None = None
    bind: str = "127.0.0.1"
    env: dict[str, str] = field(default_factory=dict)
    note: str = ""


def flower_port() -> int:
    return int(os.environ.get("FLOWER_PORT") or 5555)


def plans(settings: Settings, worker_args: list[str]) -> dict[str, Plan]:
    """The command of every service; `make` targets, `make up` and the tests all start services through this."""
    py = sys.executable
    host = _connect_host(settings.bind_host)
    # A fresh node name per worker, so a second `make worker` joins instead of clashing (unless one is given).
    named = any(arg in ("-n", "--hostname") or arg.startswith(("-n", "--hostname=")) for arg in worker_args)
    hostname = f"worker-{random.randrange(10**6):06d}@%h"
    worker_argv = [py, "-m", "longrun_worker", *([] if named else ["--hostname", hostname]), *worker_args]
    gateway = f"http://{host}:{settings.gateway_port}"
    hub = f"http://{host}:{settings.hub_port}"
    # Flower 2 serves its API only with authentication, or with this: fine for a stack bound to 127.0.0.1.
    open_api = settings.env == "development" and "FLOWER_UNAUTHENTICATED_API" not in os.environ
    flower_env = {"FLOWER_UNAUTHENTICATED_API": "true"} if open_api else {}
    flower = f"http://{host}:{flower_port()}"
    return {
        "gateway": Plan("gateway", [py, "-m", "longrun_gateway"], gateway, "/healthz",
                        port=settings.gateway_port, bind=settings.bind_host,
                        note=f"REST API (OpenAPI {gateway}/docs, dashboard {gateway}/dashboard)"),
        "hub": Plan("hub", [py, "-m", "longrun_hub"], hub, "/healthz", port=settings.hub_port,
                    bind=settings.bind_host, note="WebSocket + SSE progress"),
        "worker": Plan("worker", worker_argv,
                       ready_line=" ready.",
                       env={"LONGRUN_WORKER_QUEUES": ",".join(settings.consumed_queues)},
                       note=f"{'' if named else hostname.replace('%h', socket.gethostname()) + ' '}"
                            f"(Celery, queues {','.join(settings.consumed_queues)}; add more with `make worker`)"),
        "flower": Plan("flower", [py, "-m", "celery", "-A", FLOWER_APP, "flower",
                                  f"--address={settings.bind_host}", f"--port={flower_port()}"],
                       flower, "/healthcheck", port=flower_port(), bind=settings.bind_host, env=flower_env,
                       note="Flower (Celery monitor)"),
    }


def _connect_host(bind: str) -> str:
    return "127.0.0.1" if bind in ("0.0.0.0", "", "::") else bind


class Output:
    """Writes children's lines with a coloured `name |` prefix; one lock, so lines never interleave."""

    def __init__(self) -> None:
        self.lock = threading.RLock()  # re-entrant: the signal handler prints too
        self.color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        self.width = max(len(n) for n in (*ORDER, "migrate"))

    def line(self, name: str, text: str) -> None:
        prefix = f"{name:<{self.width}} |"
        if self.color:
            prefix = f"\033[{COLORS.get(name, '0')}m{prefix}\033[0m"
        with self.lock:
            sys.stdout.write(f"{prefix} {text.rstrip()}\n")
            sys.stdout.flush()


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the supervisor dies (even by SIGKILL), so nothing is orphaned."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Child:
    """One running service: its process, its output pump and its readiness."""

    def __init__(self, plan: Plan, env: dict[str, str], out: Output) -> None:
        self.plan, self.out = plan, out
        self.ready = threading.Event()
        self.process = subprocess.Popen(
            plan.argv, env={**env, **plan.env}, cwd=ROOT, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: signals reach it (and its pool) only from here
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        self.pump = threading.Thread(target=self._pump, name=f"pump-{plan.name}", daemon=True)

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for raw in iter(self.process.stdout.readline, b""):
            text = raw.decode(errors="replace")
            if self.plan.ready_line and self.plan.ready_line in text:
                self.ready.set()
            self.out.line(self.plan.name, text)

    def check_ready(self) -> bool:
        if self.ready.is_set() or self.plan.url is None or self.plan.ready_path is None:
            return self.ready.is_set()
        try:
            with urllib.request.urlopen(self.plan.url + self.plan.ready_path, timeout=0.5) as response:
                if response.status < 500:
                    self.ready.set()
        except (urllib.error.URLError, OSError, ValueError):
            pass
        return self.ready.is_set()

    def signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)


class Stack:
    """Starts the children, watches them, stops them all."""

    def __init__(self, selected: list[Plan], env: dict[str, str], grace: float, out: Output) -> None:
        self.selected, self.env, self.grace, self.out = selected, env, grace, out
        self.children: list[Child] = []
        self.stop_requests = 0
        self.last_signal = 0.0

    def request_stop(self, signum: int, _frame: object) -> None:
        now = time.monotonic()
        # One Ctrl-C can arrive twice: from the terminal (to the whole process group) and forwarded by a wrapper
        # such as `uv run`. A repeat within a second is that echo, not a request to force.
        if self.stop_requests and now - self.last_signal < 1.0:
            return
        self.last_signal = now
        self.stop_requests += 1
        if self.stop_requests == 1:
            self.out.line("stack", f"{signal.Signals(signum).name}: stopping (again to force) ...")
        else:
            self.out.line("stack", "forcing: SIGKILL")
            for child in self.children:
                child.signal_group(signal.SIGKILL)

    def run(self, banner: Callable[[], None]) -> int:
        for plan in self.selected:
            self.children.append(Child(plan, self.env, self.out))
        for child in self.children:  # pumps start after every fork: no thread is running across a fork
            child.pump.start()
        started, announced, failed = time.monotonic(), False, None
        while not self.stop_requests:
            for child in self.children:
                code = child.process.poll()
                if code is not None:
                    failed = child
                    self.out.line("stack", f"{child.plan.name} exited with code {code}; stopping the others")
                    break
            if failed is not None:
                break
            if not announced:
                if all(child.check_ready() for child in self.children):
                    announced = True
                    banner()
                elif time.monotonic() - started > READY_TIMEOUT:
                    waiting = [c.plan.name for c in self.children if not c.ready.is_set()]
                    self.out.line("stack", f"still not ready after {READY_TIMEOUT:.0f}s: {', '.join(waiting)}")
                    started = time.monotonic()
            time.sleep(0.1)
        self.shutdown()
        return 1 if failed is not None else 0

    def shutdown(self) -> None:
        for child in self.children:
            if child.process.poll() is None:
                child.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        warned = False
        while any(child.process.poll() is None for child in self.children):
            if time.monotonic() > deadline:
                if not warned:
                    left = [c.plan.name for c in self.children if c.process.poll() is None]
                    self.out.line("stack", f"{', '.join(left)} still running after {self.grace:.0f}s: SIGKILL")
                    warned = True
                for child in self.children:
                    child.signal_group(signal.SIGKILL)
            time.sleep(0.05)
        for child in self.children:
            child.signal_group(signal.SIGKILL)  # sweep: a pool process whose parent is gone
            child.pump.join(timeout=2)
        self.out.line("stack", "stopped")


def _port_in_use(bind: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((bind, port))
        except OSError:
            return True
    return False


def _hide_password(url: str) -> str:
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def _banner(settings: Settings, selected: list[Plan], out: Output) -> Callable[[], None]:
    def show() -> None:
        lines = ["", "Longrun is up — Ctrl-C stops it:"]
        for plan in selected:
            lines.append(f"  {plan.name:<9} {plan.url or '':<26} {plan.note}")
        lines.append(f"  {'redis':<9} {_hide_password(settings.redis_url)}")
        lines.append(f"  {'database':<9} {_hide_password(settings.database_url)}")
        if settings.env == "development":
            keys = ", ".join(f"{key} (tenant {tenant})" for key, tenant in settings.tenant_by_key.items())
            lines.append(f"  {'API key':<9} {keys}")
        if any(plan.name == "gateway" for plan in selected):
            key = next(iter(settings.tenant_by_key), "KEY")
            gateway = next(plan.url for plan in selected if plan.name == "gateway")
            lines += ["", "Submit a job:",
                      f"  curl -s -X POST {gateway}/v1/jobs -H 'Authorization: Bearer {key}' "
                      "-H 'Content-Type: application/json' "
                      """-d '{"task":"demo.steps","args":{"steps":50,"delay":0.1}}'"""]
        lines.append("")
        for text in lines:
            out.line("stack", text)

    return show


def main(argv: list[str]) -> int:
    if "--" in argv:
        index = argv.index("--")
        argv, worker_args = argv[:index], argv[index + 1 :]
    else:
        worker_args = []
    parser = argparse.ArgumentParser(description="Run Longrun's services in the foreground.")
    parser.add_argument("services", nargs="*", metavar="SERVICE", help=f"any of {', '.join(ORDER)} (default: all)")
    parser.add_argument("--no-migrate", action="store_true", help="do not migrate the database first")
    parser.add_argument("--grace", type=float, default=None,
                        help="seconds to let services stop before SIGKILL (default: LONGRUN_DRAIN_SECONDS + 10, "
                             "so a worker can finish its running jobs)")
    parser.add_argument("--queues", default=None, metavar="Q1,Q2",
                        help="queues the worker consumes (LONGRUN_WORKER_QUEUES; default: every queue of "
                             "LONGRUN_QUEUES)")
    args = parser.parse_args(argv)
    if args.queues is not None:
        os.environ["LONGRUN_WORKER_QUEUES"] = args.queues  # Settings() below checks them against LONGRUN_QUEUES
    unknown = sorted(set(args.services) - set(ORDER))
    if unknown:
        parser.error(f"unknown service(s) {', '.join(unknown)}; choose from {', '.join(ORDER)}")
    names = [name for name in ORDER if name in args.services] or list(ORDER)

    from pydantic import ValidationError

    from longrun_common.settings import Settings

    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"stack: invalid LONGRUN_* settings:\n{exc}", file=sys.stderr)
        return 2
    out = Output()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # The gateway hands clients the hub's URL: follow a changed hub port unless the URL was set explicitly.
    env.setdefault("LONGRUN_HUB_PUBLIC_URL", f"http://{_connect_host(settings.bind_host)}:{settings.hub_port}")
    selected = [plans(settings, worker_args)[name] for name in names]

    busy = [p for p in selected if p.port is not None and _port_in_use(p.bind, p.port)]
    for plan in busy:
        print(f"stack: port {plan.port} ({plan.name}) is already in use — is a stack already running? "
              f"Choose another with {_port_variable(plan.name)}=...", file=sys.stderr)
    if busy:
        return 1

    if not args.no_migrate:
        migrate = subprocess.run([sys.executable, "-m", "longrun_common.db"], cwd=ROOT, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
        for text in migrate.stdout.decode(errors="replace").splitlines():
            out.line("migrate", text)
        if migrate.returncode != 0:
            print(f"stack: migrating the database failed (exit {migrate.returncode})", file=sys.stderr)
            return 1

    grace = args.grace if args.grace is not None else float(getattr(settings, "drain_seconds", 20.0)) + 10
    stack = Stack(selected, env, grace, out)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stack.request_stop)
    return stack.run(_banner(settings, selected, out))


def _port_variable(name: str) -> str:
    return {"gateway": "LONGRUN_GATEWAY_PORT", "hub": "LONGRUN_HUB_PORT", "flower": "FLOWER_PORT"}[name]


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:  # before the services started (e.g. during the migration)
        sys.exit(130)
