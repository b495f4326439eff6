"""Run a command while holding an exclusive file lock: `python scripts/with_lock.py LOCKFILE -- CMD ARGS...`.

Services started at the same moment on a fresh clone (`make gateway & make worker`) all want to install uv into
.tools/venv and run `uv sync` at once; two of either step at the same time break each other. The Makefile runs
both through this, so the second waits for the first and then finds the work done. Standard library only (it
runs before any environment exists); the lock is flock(2), released when the command exits, even by a crash.
"""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: with_lock.py LOCKFILE -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    lock_path = Path(argv[0])
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"waiting for {lock_path} (another make is setting up) ...", file=sys.stderr, flush=True)
        fcntl.flock(fd, fcntl.LOCK_EX)
    # The command inherits the locked descriptor: the lock lasts exactly as long as the command.
    os.set_inheritable(fd, True)
    os.execvp(argv[2], argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
