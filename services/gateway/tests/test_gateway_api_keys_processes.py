"""API keys across processes: the `keys` command as an operator runs it, and a revocation reaching a second
gateway process within the cache TTL."""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from longrun_common.apikeys import ApiKeyStore, KeyStatus, key_id_of, matches, status
from longrun_common.settings import Settings
from longrun_gateway import __main__ as entry
from tests.support.fixtures import ServiceFactory, wait_ready
from tests.support.processes import python_module, service_env
from tests.support.servers import repo_root

pytestmark = pytest.mark.integration

CACHE_SECONDS = 1.0


def keys_command(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m longrun_gateway keys …` with this test's LONGRUN_* environment."""
    return subprocess.run(
        python_module("longrun_gateway", "keys", *args),
        env=service_env(env), cwd=repo_root(), capture_output=True, text=True, timeout=60,
    )


def created(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr
    view: dict[str, Any] = json.loads(result.stdout)
    return view


@pytest.mark.timeout(300)  # a fresh interpreter per command: seconds of imports each on a busy machine
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_keys_command_creates_lists_rotates_and_revokes(
    settings_env: dict[str, str],
    settings: Settings,
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = ApiKeyStore.for_settings(engine, settings)

    # As an operator runs it (a subprocess): the key alone on stdout (for `KEY=$(…)`), what it is on stderr.
    made = keys_command(settings_env, "create", "--tenant", "acme", "--name", "ops", "--scope", "admin",
                        "--scope", "jobs", "--expires-in", "3600")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    key_id = key_id_of(key)
    assert key_id is not None and made.stdout == key + "\n"
    assert f"created key {key_id} for tenant acme" in made.stderr and "shown this once" in made.stderr
    row = store.get(key_id)
    assert row.tenant == "acme" and row.scopes == ["jobs", "admin"] and row.created_by == "cli"
    assert row.expires_at is not None and matches(store.pepper, key, row.secret_hash)

    # The other commands in this process (the same entry point, `python -m longrun_gateway keys …`).
    for name, value in settings_env.items():
        monkeypatch.setenv(name, value)

    def run(*args: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as exited:
            entry.main(["keys", *args])
        out, err = capsys.readouterr()
        return int(exited.value.code or 0), out, err

    code, out, _ = run("create", "--tenant", "dev", "--name", "ci", "-o", "json")
    other = json.loads(out)
    assert code == 0 and other["scopes"] == ["jobs"] and other["expires_at"] is None
    assert key_id_of(other["key"]) == other["id"]

    listing = keys_command(settings_env, "list", "--tenant", "acme")
    assert listing.returncode == 0 and key_id in listing.stdout and other["id"] not in listing.stdout
    assert key.rsplit("_", 1)[1] not in listing.stdout
    code, out, _ = run("list", "-o", "json")
    assert code == 0 and {item["id"] for item in json.loads(out)["items"]} == {key_id, other["id"]}
    assert other["key"] not in out

    code, out, _ = run("rotate", key_id, "--grace", "600", "-o", "json")
    rotated = json.loads(out)
    assert code == 0 and rotated["replaces"]["id"] == key_id and rotated["replaces"]["status"] == "rotated"
    assert rotated["tenant"] == "acme" and rotated["scopes"] == ["jobs", "admin"]
    assert status(store.get(key_id)) is KeyStatus.ROTATED
    assert matches(store.pepper, rotated["key"], store.get(rotated["id"]).secret_hash)

    code, out, _ = run("revoke", other["id"])
    assert code == 0 and f"revoked {other['id']}" in out
    assert status(store.get(other["id"])) is KeyStatus.REVOKED

    # Refusals: exit status 1 and a message; usage errors: 2.
    assert run("revoke", "zzzzzzzzzzzz")[::2] == (1, "error: no API key with id 'zzzzzzzzzzzz'\n")
    code, _, err = run("rotate", key_id)
    assert code == 1 and "cannot be rotated" in err
    code, _, err = run("create", "--tenant", "a b", "--name", "x")
    assert code == 1 and "tenant 'a b'" in err
    assert run("create", "--tenant", "dev", "--name", "x", "--scope", "root")[0] == 2
    assert run()[0] == 2


# One backend as deployed (PostgreSQL) keeps this slow test single; every path also runs in-process on both.
@pytest.mark.timeout(300)
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_revocation_reaches_a_second_gateway_within_the_cache_ttl(
    services: ServiceFactory, settings_env: dict[str, str]
) -> None:
    env = {"LONGRUN_API_KEY_CACHE_SECONDS": str(CACHE_SECONDS)}
    first, second = services("gateway", env=env, wait=False), services("gateway", env=env, wait=False)
    wait_ready(first, second)  # booted side by side
    admin = keys_command(settings_env, "create", "--tenant", "dev", "--name", "ops", "--scope", "admin")
    assert admin.returncode == 0, admin.stderr
    auth = {"Authorization": f"Bearer {admin.stdout.strip()}"}
    with httpx.Client(timeout=10) as http:
        made = http.post(f"{first.url}/v1/admin/keys", json={"name": "svc"}, headers=auth)
        assert made.status_code == 201, made.text
        key = {"Authorization": f"Bearer {made.json()['key']}"}
        # Both processes accept it (and the second now holds it in its cache).
        assert http.get(f"{first.url}/v1/jobs", headers=key).status_code == 200
        assert http.get(f"{second.url}/v1/jobs", headers=key).status_code == 200

        revoked = http.post(f"{first.url}/v1/admin/keys/{made.json()['id']}/revoke", headers=auth)
        assert revoked.status_code == 200, revoked.text
        began = time.monotonic()
        assert http.get(f"{first.url}/v1/jobs", headers=key).status_code == 401  # where it was revoked: at once
        while (answer := http.get(f"{second.url}/v1/jobs", headers=key)).status_code == 200:
            assert time.monotonic() - began < CACHE_SECONDS + 3, "the second gateway still accepts a revoked key"
            time.sleep(0.05)
        took = time.monotonic() - began
        assert answer.status_code == 401 and answer.json()["error"]["message"] == "API key revoked"
        assert took <= CACHE_SECONDS + 1.0, took
