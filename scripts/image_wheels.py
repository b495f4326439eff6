"""Wheels for the Longrun image, made on the host: the image build then installs them offline.

    python scripts/image_wheels.py --context DIR --env-json '{...}' [--pip 'python3 -m pip'] [--uv uv]

Why on the host: pip inside a build cannot verify TLS where the machine trusts a private CA that a fresh image
does not, and building offline makes the image exactly the lock. It writes, under DIR:

- `requirements.txt` — the locked runtime dependencies (`uv export`, no dev group) that apply to the image's
  Python, markers evaluated against the image's own interpreter (`--env-json`, printed by the base image: its
  Python 3.11.2 needs `async-timeout`, a host 3.11.7 does not), pinned and hashed;
- `wheels/deps/` — those wheels (`pip download --only-binary :all: --require-hashes`; kept between runs, stale
  ones pruned), for the host's platform tags: the host must be the image's glibc or older (both bookworm here);
- `wheels/longrun/` — the four workspace packages (`uv build`), reproducible (SOURCE_DATE_EPOCH) so that an
  unchanged tree gives identical wheels and the image build reuses its cached layer.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from packaging.markers import Marker
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^(?P<name>[A-Za-z0-9._-]+)==(?P<version>[^\s;\\]+)\s*(?:;\s*(?P<marker>[^\\]+?))?\s*$")


def requirements(uv: str, env: dict[str, str]) -> list[tuple[str, str, list[str]]]:
    """(name, version, hashes) of every locked runtime dependency the image's interpreter needs."""
    exported = subprocess.run(
        [uv, "export", "--frozen", "--no-dev", "--no-emit-workspace", "--format", "requirements-txt",
         "--no-header", "--no-annotate"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    entries, current = [], ""
    for line in exported.splitlines():  # an entry continues over lines ending in a backslash
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        current += line.rstrip().rstrip("\\") + " "
        if not line.rstrip().endswith("\\"):
            entries.append(current.strip())
            current = ""
    pins = []
    for entry in entries:
        head, *hash_parts = entry.split(" --hash=")
        match = PIN.match(head.strip())
        if match is None:
            raise SystemExit(f"image_wheels: cannot read the exported requirement {entry[:120]!r}")
        marker = match["marker"]
        if marker and not Marker(marker).evaluate(env):
            continue
        pins.append((match["name"], match["version"], [h.strip() for h in hash_parts]))
    return pins


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context", type=Path, required=True)
    parser.add_argument("--env-json", required=True, help="the image interpreter's marker environment")
    parser.add_argument("--pip", default=f"{shlex.quote(sys.executable)} -m pip", help="a pip command line")
    parser.add_argument("--uv", default=os.environ.get("UV", "uv"))
    args = parser.parse_args(argv)
    env = json.loads(args.env_json)
    deps_dir, own_dir = args.context / "wheels" / "deps", args.context / "wheels" / "longrun"
    deps_dir.mkdir(parents=True, exist_ok=True)

    pins = requirements(args.uv, env)
    lines = [f"{name}=={version} " + " ".join(f"--hash={h}" for h in hashes) for name, version, hashes in pins]
    (args.context / "requirements.txt").write_text("\n".join(lines) + "\n")
    if _all_present(pins, deps_dir):
        print("image_wheels: every locked wheel is already downloaded (hashes match)")
    else:
        rc = _download(args.pip, args.context / "requirements.txt", deps_dir)
        if rc:
            return rc
    wanted = {(canonicalize_name(name), str(Version(version))) for name, version, _ in pins}
    for wheel in deps_dir.glob("*.whl"):  # wheels of an older lock
        name, version, *_ = parse_wheel_filename(wheel.name)
        if (name, str(version)) not in wanted:
            wheel.unlink()

    shutil.rmtree(own_dir, ignore_errors=True)
    subprocess.run(
        [args.uv, "build", "--quiet", "--all-packages", "--wheel", "--out-dir", str(own_dir)],
        cwd=ROOT, check=True, env={**os.environ, "SOURCE_DATE_EPOCH": "315532800"},
    )
    print(f"image_wheels: {len(pins)} locked dependencies, {len(list(own_dir.glob('*.whl')))} Longrun wheels")
    return 0


def _all_present(pins: list[tuple[str, str, list[str]]], deps_dir: Path) -> bool:
    """True when each pin has a wheel here whose sha256 is one the lock allows (then pip need not run:
    it would ask the index about every package again)."""
    by_pin: dict[tuple[str, str], list[Path]] = {}
    for wheel in deps_dir.glob("*.whl"):
        wheel_name, wheel_version, *_ = parse_wheel_filename(wheel.name)
        by_pin.setdefault((wheel_name, str(wheel_version)), []).append(wheel)
    for name, version, hashes in pins:
        allowed = {h.removeprefix("sha256:") for h in hashes}
        files = by_pin.get((canonicalize_name(name), str(Version(version))), [])
        if not any(hashlib.sha256(f.read_bytes()).hexdigest() in allowed for f in files):
            return False
    return True


def _download(pip: str, requirements_file: Path, deps_dir: Path) -> int:
    download = subprocess.run(
        [*shlex.split(pip), "download", "--quiet", "--disable-pip-version-check", "--no-deps",
         "--only-binary=:all:", "--require-hashes", "-r", str(requirements_file), "-d", str(deps_dir)],
        check=False, stderr=subprocess.PIPE, text=True,
    )
    # A machine's pip.conf may name extra indexes that lack most packages: pip warns once per package.
    noise = "is neither a file nor a directory"
    sys.stderr.write("".join(line for line in download.stderr.splitlines(True) if noise not in line))
    return download.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
