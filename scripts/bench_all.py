#!/usr/bin/env python3
"""`make bench`: run every bench/*.py in turn (files starting with `_` are helpers), then print every target line.

Each benchmark compares against its own baseline in the same run and prints its verdicts as `... MET` or
`... MISSED`; their output scrolls by for minutes, so the verdict lines are collected and repeated at the end,
each under its script's name. Extra arguments go to every script (e.g. `--database-url`).
Exits 1 when a script failed (its verdicts, if any, are still listed); a MISSED target is a result, not a failure.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VERDICT = re.compile(r"\b(MET|MISSED)\b")


def run(script: Path, extra: list[str]) -> tuple[int, list[str]]:
    """Run one benchmark with its output shown as it comes; its exit code and its verdict lines."""
    verdicts: list[str] = []
    with subprocess.Popen([sys.executable, str(script), *extra], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, bufsize=1) as process:
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.write(line)
            if VERDICT.search(line):
                verdicts.append(line.strip())
    return process.returncode, verdicts


def main() -> int:
    scripts = sorted(p for p in (ROOT / "bench").glob("*.py") if not p.name.startswith("_"))
    if not scripts:
        print("make bench: no benchmarks in bench/ yet")
        return 0
    results: list[tuple[str, int, float, list[str]]] = []
    for script in scripts:
        print(f"=== {script.relative_to(ROOT)}", flush=True)
        began = time.monotonic()
        code, verdicts = run(script, sys.argv[1:])
        results.append((script.name, code, time.monotonic() - began, verdicts))
    print("\n=== summary: every target line, by script")
    for name, code, seconds, verdicts in results:
        state = "ok" if code == 0 else f"FAILED (exit {code})"
        print(f"{name} ({seconds:.0f} s, {state})")
        for line in verdicts or ["(no target: figures only)"]:
            print(f"    {line}")
    failed = [name for name, code, _, _ in results if code != 0]
    if failed:
        print(f"make bench: failed: {' '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
