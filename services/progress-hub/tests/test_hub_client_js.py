"""The browser client (client.js) under node, with a fake WebSocket: the paths a live hub rarely takes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import playwright
import pytest

pytestmark = pytest.mark.unit

HERE = Path(__file__).parent
CLIENT_JS = HERE.parent / "src" / "longrun_hub" / "static" / "client.js"


def node() -> str:
    """node on PATH, else the one Playwright ships with (always installed with the test dependencies)."""
    found = shutil.which("node")
    if found:
        return found
    bundled = Path(playwright.__file__).parent / "driver" / "node"
    if bundled.exists():
        return str(bundled)
    raise RuntimeError("no node: install nodejs, or the playwright package (it bundles node)")


def test_client_js() -> None:
    result = subprocess.run([node(), str(HERE / "js" / "client.test.mjs"), str(CLIENT_JS)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("ok ") == 3, result.stdout
