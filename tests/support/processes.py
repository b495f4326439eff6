"""Services started as real processes (uvicorn, Celery), each in its own process group."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .servers import free_port, repo_root


@dataclass
class Service:
    """A running service process; its output goes to a log file the test can read on failure."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    port: int | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    # Generous: on a loaded machine (2 cores, several suites at once) importing the stack alone can take 30 s.
    def start(self, ready_path: str | None = "/healthz", timeout: float = 90.0) -> Service:
        with self.log_path.open("ab") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=repo_root(),
                start_new_session=True,  # its own process group: kill -9 reaches the whole pool
            )
        if self.port is not None and ready_path is not None:
            self.wait_http(ready_path, timeout)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_http(self, path: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.logs()}")
            try:
                if httpx.get(self.url + path, timeout=1).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready after {timeout}s:\n{self.logs()}")

    def wait_log(self, text: str, timeout: float = 30.0) -> None:
        """Wait until the service's output contains `text` (e.g. Celery's 'ready.')."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.logs():
                return
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.logs()}")
            time.sleep(0.1)
        raise TimeoutError(f"{self.name}: {text!r} not seen after {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal_group(self, sig: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, sig)

    def kill(self) -> None:
        """kill -9 the whole process group and wait until the process has died."""
        self.signal_group(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(10)

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        with contextlib.suppress(ProcessLookupError):  # children may outlive their parent; sweep the group
            os.killpg(self.process.pid, signal.SIGKILL)


def service_env(overrides: dict[str, str]) -> dict[str, str]:
    """The test's environment for a child service: no stray LONGRUN_* from the developer's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LONGRUN_")}
    env.update(overrides)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


__all__ = ["Service", "free_port", "python_module", "service_env"]
