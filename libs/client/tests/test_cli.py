"""The `longrun` command as people use it: in a real terminal (tmux: send-keys, capture-pane) with live bars,
and piped (NDJSON), with exit statuses that say how the job ended."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clientstack import Stack

from longrun_client import Client
from longrun_common.apikeys import ApiKeyStore
from longrun_common.db import create_db_engine
from longrun_common.settings import Settings
from tests.support.processes import service_env

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]  # the first test also starts the stack

LONGRUN = str(Path(sys.executable).with_name("longrun"))
TMUX = shutil.which("tmux") or "/usr/bin/tmux"
EXITED = r"EXIT=\d+"  # the echo after the command (the typed line shows `EXIT=$?`)


class Terminal:
    """A tmux session on a private server socket: type commands, read the screen."""

    def __init__(self, env: dict[str, str]) -> None:
        self.socket = f"longrun-cli-{uuid.uuid4().hex[:8]}"
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        self.tmux("new-session", "-d", "-x", "200", "-y", "40", "-s", "t", f"env {exports} bash --norc --noprofile")

    def tmux(self, *args: str) -> str:
        return subprocess.run([TMUX, "-L", self.socket, *args], check=True, capture_output=True, text=True).stdout

    def type(self, line: str) -> None:
        self.tmux("send-keys", "-t", "t", line, "Enter")

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "t")

    def wait_for(self, pattern: str, timeout: float = 120) -> str:
        """The screen once `pattern` (a regex) shows on it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if re.search(pattern, screen):
                return screen
            time.sleep(0.2)
        raise TimeoutError(f"{pattern!r} not on screen after {timeout}s:\n{self.screen()}")

    def close(self) -> None:
        subprocess.run([TMUX, "-L", self.socket, "kill-server"], capture_output=True)


def cli_env(stack: Stack, api_key: str) -> dict[str, str]:
    return {"LONGRUN_URL": stack.gateway.url, "LONGRUN_API_KEY": api_key, "TERM": "xterm-256color"}


@pytest.fixture
def terminal(stack: Stack, api_key: str) -> Iterator[Terminal]:
    term = Terminal(cli_env(stack, api_key))
    yield term
    term.close()


def longrun(stack: Stack, api_key: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`longrun …` with stdout a pipe (so: NDJSON)."""
    env = service_env(cli_env(stack, api_key))
    return subprocess.run([LONGRUN, *args], env=env, capture_output=True, text=True, timeout=180)


def lines(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_submit_follow_shows_a_bar_reaching_100_percent(terminal: Terminal) -> None:
    terminal.type(f"{LONGRUN} submit demo.steps --arg steps=30 --arg delay=0.05 --follow; echo EXIT=$?")
    screen = terminal.wait_for(EXITED)
    assert "EXIT=0" in screen, screen
    bar = next(line for line in screen.splitlines() if "demo.steps" in line and "%" in line)
    assert "100.0%" in bar and "succeeded" in bar and "step 30/30" in bar, screen


def test_follow_in_a_terminal_survives_a_hub_restart(stack: Stack, terminal: Terminal) -> None:
    terminal.type(f"{LONGRUN} submit demo.steps --arg steps=80 --arg delay=0.1 --follow; echo EXIT=$?")
    terminal.wait_for(r"running +steps +step [1-9]\d*/80")  # the bar is live
    stack.restart_hub()
    screen = terminal.wait_for(EXITED)
    assert "EXIT=0" in screen and "100.0%" in screen and "step 80/80" in screen, screen


def test_ctrl_c_detaches_and_prints_the_cancel_command(stack: Stack, api_key: str, terminal: Terminal) -> None:
    terminal.type(f"{LONGRUN} submit demo.steps --arg steps=600 --arg delay=0.1 --follow; echo EXIT=$?")
    terminal.wait_for(r"running +steps +step [1-9]\d*/600")
    terminal.tmux("send-keys", "-t", "t", "C-c")
    screen = terminal.wait_for(EXITED)
    assert "EXIT=130" in screen and "detached" in screen, screen
    found = re.search(r"longrun jobs cancel (\S+)", screen)
    assert found, screen
    with stack.client(api_key) as client:
        assert client.get(found[1]).status == "running"  # detached, not cancelled
        client.cancel(found[1])


def test_piped_output_is_ndjson_and_the_exit_status_says_how_it_ended(stack: Stack, api_key: str) -> None:
    ok = longrun(stack, api_key, "submit", "demo.steps", "--arg", "steps=3", "--follow")
    assert ok.returncode == 0, ok.stderr
    events = lines(ok)
    assert events[0]["status"] == "queued" and events[-1]["status"] == "succeeded"

    failed = longrun(stack, api_key, "submit", "demo.steps", "-a", "steps=4", "-a", "fail_times=9", "--follow")
    assert failed.returncode == 1, failed.stderr
    assert lines(failed)[-1]["status"] == "failed"

    missing = longrun(stack, api_key, "jobs", "show", "00000000-0000-0000-0000-000000000000")
    assert missing.returncode == 3 and "404" in missing.stderr and "not_found" in missing.stderr.replace("-", "_")
    invalid = longrun(stack, api_key, "submit", "demo.steps", "--arg", "steps=lots")
    assert invalid.returncode == 3 and "steps" in invalid.stderr
    assert longrun(stack, api_key, "submit", "demo.steps", "--arg", "nokey").returncode == 2


def test_jobs_dead_letters_and_tasks_commands(stack: Stack, api_key: str) -> None:
    with stack.client(api_key) as client:
        failed = client.submit("demo.steps", {"steps": 2, "fail_times": 9})
        assert client.wait(failed.id, timeout=120).status == "failed"
    listed = lines(longrun(stack, api_key, "jobs", "ls", "--status", "failed"))
    assert [j["id"] for j in listed] == [failed.id]
    letters = lines(longrun(stack, api_key, "dlq", "ls"))
    assert [d["job_id"] for d in letters] == [failed.id]
    shown = lines(longrun(stack, api_key, "dlq", "show", letters[0]["id"]))[0]
    assert len(shown["history"]) == 4 and "planned failure" in shown["traceback"]
    assert longrun(stack, api_key, "dlq", "requeue").returncode == 2  # neither an id nor a filter
    requeued = lines(longrun(stack, api_key, "dlq", "requeue", "--task", "demo.steps"))
    assert requeued == [{"requeued": [failed.id]}]
    task = lines(longrun(stack, api_key, "tasks", "show", "demo.steps"))[0]
    assert set(task["args_schema"]["properties"]) >= {"steps", "delay", "fail_times"}


def test_tasks_show_prints_the_args_schema_as_a_table(terminal: Terminal) -> None:
    terminal.type(f"{LONGRUN} tasks show demo.steps; echo EXIT=$?")
    screen = terminal.wait_for(EXITED)
    assert "EXIT=0" in screen
    row = next(line for line in screen.splitlines() if re.match(r"\W*steps\s", line))  # the table's row
    assert "integer" in row and "yes" in row and "minimum=1" in row, screen


def test_files_and_keys_commands(stack: Stack, api_key: str, tmp_path: Path) -> None:
    settings = Settings(database_url=stack.env["LONGRUN_DATABASE_URL"])
    engine = create_db_engine(settings)
    tenant = api_key.removesuffix("-key")
    _, admin = ApiKeyStore.for_settings(engine, settings).create(tenant, "cli-admin", ["admin", "jobs"])
    engine.dispose()
    made = lines(longrun(stack, admin, "keys", "create", "ci-bot", "--scope", "jobs"))[0]
    assert made["key"].startswith("lr_") and made["scopes"] == ["jobs"]
    assert made["id"] in {k["id"] for k in lines(longrun(stack, admin, "keys", "ls"))}
    assert lines(longrun(stack, admin, "keys", "revoke", made["id"]))[0]["status"] == "revoked"
    assert longrun(stack, api_key, "keys", "ls").returncode == 3  # a key without the admin scope: 403

    data = tmp_path / "data.bin"
    data.write_bytes(b"x" * 1000)
    stored = lines(longrun(stack, api_key, "files", "upload", str(data)))[0]
    assert stored["size"] == 1000
    with Client(stack.gateway.url, api_key) as client:
        assert client.file_info(stored["id"]).sha256 == stored["sha256"]
