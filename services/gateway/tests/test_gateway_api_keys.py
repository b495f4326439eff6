"""API keys in SQL through a real gateway (SQLite and PostgreSQL): /v1/admin/keys, scopes, rotation, revocation,
expiry, tenant isolation, and the per-process cache in front of SQL."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from gateway_support import DEV, error_of, gateway_of, submit
from sqlalchemy import Engine, event
from sqlmodel import Session

from longrun_common.apikeys import ApiKeyStore, key_id_of
from longrun_common.db import create_db_engine
from longrun_common.models import ApiKey
from longrun_common.settings import Settings
from longrun_gateway.auth import Authenticator

pytestmark = pytest.mark.integration

KEYS = "/v1/admin/keys"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def admin_key(client: httpx.AsyncClient, tenant: str = "dev", scopes: tuple[str, ...] = ("admin",)) -> str:
    """An admin key made as the server-side command makes one (the store, no HTTP)."""
    _, key = gateway_of(client).auth.store.create(tenant, f"{tenant} admin", scopes, created_by="test")
    return key


async def create(client: httpx.AsyncClient, admin: str, **body: Any) -> dict[str, Any]:
    body.setdefault("name", "ci")
    response = await client.post(KEYS, json=body, headers=bearer(admin))
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    assert response.headers["location"] == f"{KEYS}/{created['id']}"
    return created


async def test_admin_creates_a_key_shown_once_that_then_works(client: httpx.AsyncClient, engine: Engine) -> None:
    admin = admin_key(client)
    created = await create(client, admin, name="ci runner")
    key = created["key"]
    assert key_id_of(key) == created["id"] and key.startswith(created["prefix"])
    assert created["tenant"] == "dev" and created["scopes"] == ["jobs"] and created["status"] == "active"
    assert created["expires_at"] is None and created["last_used_at"] is None
    assert created["created_by"] == key_id_of(admin)

    job = await submit(client, headers=bearer(key))
    assert job["tenant"] == "dev"
    assert (await client.get(f"/v1/jobs/{job['id']}", headers=DEV)).status_code == 200  # same tenant

    # Never the key, never its hash: not in the list, not in one key's view, not in SQL.
    listed = await client.get(KEYS, headers=bearer(admin))
    assert listed.status_code == 200
    page = listed.json()
    assert set(page) == {"items", "next_cursor"} and page["next_cursor"] is None
    assert [item["id"] for item in page["items"]] == [created["id"], key_id_of(admin)]
    secret = key.rsplit("_", 1)[1]
    assert secret not in listed.text and "key" not in page["items"][0] and "secret_hash" not in page["items"][0]
    one = await client.get(f"{KEYS}/{created['id']}", headers=bearer(admin))
    assert one.status_code == 200 and secret not in one.text
    assert one.json()["last_used_at"] is not None  # the first read of a used key records it
    with Session(engine) as session:
        row = session.get(ApiKey, created["id"])
        assert row is not None and secret not in row.secret_hash and row.secret_hash != key
        assert all(secret not in str(value) for value in row.model_dump().values())

    # Pagination: the list shape of every list endpoint.
    first = (await client.get(f"{KEYS}?limit=1", headers=bearer(admin))).json()
    assert len(first["items"]) == 1 and first["next_cursor"]
    second = (await client.get(f"{KEYS}?limit=1&cursor={first['next_cursor']}", headers=bearer(admin))).json()
    assert [item["id"] for item in second["items"]] == [key_id_of(admin)] and second["next_cursor"] is None


async def test_scopes_decide_the_routes_a_key_reaches(client: httpx.AsyncClient) -> None:
    admin_only = admin_key(client)
    both = admin_key(client, scopes=("admin", "jobs"))
    jobs_only = (await create(client, admin_only))["key"]
    for headers in (bearer(jobs_only), DEV):  # a bootstrap key is never an admin
        response = await client.get(KEYS, headers=headers)
        assert response.status_code == 403, response.text
        error = error_of(response)
        assert error["code"] == "forbidden" and error["details"]["required_scope"] == "admin"
    response = await client.get("/v1/jobs", headers=bearer(admin_only))
    assert response.status_code == 403 and error_of(response)["details"]["required_scope"] == "jobs"
    assert (await client.get("/v1/jobs", headers=bearer(both))).status_code == 200
    assert (await client.get(KEYS, headers=bearer(both))).status_code == 200
    made_admin = await create(client, admin_only, name="second admin", scopes=["admin", "jobs"])
    assert made_admin["scopes"] == ["jobs", "admin"]


@pytest.mark.parametrize(
    ("headers", "fragment"),
    [
        ({}, "missing Authorization header"),
        ({"Authorization": "Token abc"}, "malformed Authorization header"),
        (bearer("lr_" + "a" * 12 + "_" + "b" * 43), "invalid API key"),  # well-formed, unknown
        (bearer("lr_" + "a" * 12 + "_" + "b" * 42), "invalid API key"),
    ],
)
async def test_admin_routes_answer_401_in_the_envelope(
    client: httpx.AsyncClient, headers: dict[str, str], fragment: str
) -> None:
    for method, path in [("GET", KEYS), ("POST", KEYS), ("GET", f"{KEYS}/abc"), ("POST", f"{KEYS}/abc/rotate"),
                         ("POST", f"{KEYS}/abc/revoke")]:
        response = await client.request(method, path, headers=headers, content=b"{not json")
        assert response.status_code == 401, (method, path, response.text)
        error = error_of(response)
        assert error["code"] == "unauthorized" and fragment in error["message"]
        assert response.headers["www-authenticate"].startswith("Bearer")


async def test_a_wrong_secret_for_a_real_key_id_is_refused(client: httpx.AsyncClient, engine: Engine) -> None:
    admin = admin_key(client)
    key = (await create(client, admin))["key"]
    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    response = await client.get("/v1/jobs", headers=bearer(forged))
    assert response.status_code == 401 and error_of(response)["message"] == "invalid API key"
    with Session(engine) as session:  # a failed attempt is not a use
        row = session.get(ApiKey, key_id_of(key))
        assert row is not None and row.last_used_at is None


async def test_rotation_keeps_the_old_key_for_its_grace_period_only(client: httpx.AsyncClient) -> None:
    admin = admin_key(client)
    old = await create(client, admin, name="deployer", expires_in=3600)
    assert (await client.get("/v1/jobs", headers=bearer(old["key"]))).status_code == 200  # now cached

    rotated = await client.post(f"{KEYS}/{old['id']}/rotate", json={"grace_seconds": 1}, headers=bearer(admin))
    assert rotated.status_code == 201, rotated.text
    new = rotated.json()
    assert new["name"] == "deployer" and new["scopes"] == ["jobs"] and new["id"] != old["id"]
    assert rotated.headers["location"] == f"{KEYS}/{new['id']}"
    assert new["replaces"]["id"] == old["id"] and new["replaces"]["status"] == "rotated"
    assert new["replaces"]["replaced_by"] == new["id"] and new["replaces"]["grace_until"]
    lifetime = _at(new["expires_at"]) - _at(new["created_at"])
    assert abs(lifetime - timedelta(hours=1)) < timedelta(seconds=1)  # the old key's lifetime carries over
    for key in (old["key"], new["key"]):
        assert (await client.get("/v1/jobs", headers=bearer(key))).status_code == 200

    await asyncio.sleep(1.2)
    response = await client.get("/v1/jobs", headers=bearer(old["key"]))
    assert response.status_code == 401 and "rotated" in error_of(response)["message"]
    assert (await client.get("/v1/jobs", headers=bearer(new["key"]))).status_code == 200
    again = await client.post(f"{KEYS}/{old['id']}/rotate", headers=bearer(admin))
    assert again.status_code == 409 and new["id"] in error_of(again)["message"]

    # Without a body: a 24-hour grace period, and the expiry the request asks for.
    newer = await client.post(f"{KEYS}/{new['id']}/rotate", json={"expires_in": 60}, headers=bearer(admin))
    assert newer.status_code == 201, newer.text
    grace = _at(newer.json()["replaces"]["grace_until"]) - datetime.now(UTC)
    assert timedelta(hours=23, minutes=59) < grace <= timedelta(hours=24)
    assert (await client.post(f"{KEYS}/{newer.json()['id']}/rotate", headers=bearer(admin))).status_code == 201


async def test_revocation_is_immediate_on_this_gateway(client: httpx.AsyncClient) -> None:
    admin = admin_key(client)
    created = await create(client, admin)
    assert (await client.get("/v1/jobs", headers=bearer(created["key"]))).status_code == 200  # now cached
    revoked = await client.post(f"{KEYS}/{created['id']}/revoke", headers=bearer(admin))
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked" and revoked.json()["revoked_at"]
    response = await client.get("/v1/jobs", headers=bearer(created["key"]))
    assert response.status_code == 401 and error_of(response)["message"] == "API key revoked"
    again = await client.post(f"{KEYS}/{created['id']}/revoke", headers=bearer(admin))
    assert again.status_code == 200 and again.json()["revoked_at"] == revoked.json()["revoked_at"]
    assert (await client.post(f"{KEYS}/{created['id']}/rotate", headers=bearer(admin))).status_code == 409
    # An admin may revoke its own key; it stops working for key management too.
    assert (await client.post(f"{KEYS}/{key_id_of(admin)}/revoke", headers=bearer(admin))).status_code == 200
    assert (await client.get(KEYS, headers=bearer(admin))).status_code == 401


async def test_an_expired_key_is_refused(client: httpx.AsyncClient) -> None:
    admin = admin_key(client)
    created = await create(client, admin, expires_in=1)
    assert created["expires_at"] is not None
    assert (await client.get("/v1/jobs", headers=bearer(created["key"]))).status_code == 200
    await asyncio.sleep(1.1)
    response = await client.get("/v1/jobs", headers=bearer(created["key"]))
    assert response.status_code == 401 and error_of(response)["message"] == "API key expired"
    listed = (await client.get(KEYS, headers=bearer(admin))).json()["items"]
    assert {item["id"]: item["status"] for item in listed}[created["id"]] == "expired"
    assert (await client.post(f"{KEYS}/{created['id']}/rotate", headers=bearer(admin))).status_code == 409


async def test_a_tenant_admin_never_sees_or_touches_another_tenants_keys(client: httpx.AsyncClient) -> None:
    dev_admin = admin_key(client, "dev")
    acme_admin = admin_key(client, "acme")
    dev_key = await create(client, dev_admin)
    acme_key = await create(client, acme_admin)
    assert acme_key["tenant"] == "acme"

    listed = (await client.get(KEYS, headers=bearer(acme_admin))).json()["items"]
    assert {item["id"] for item in listed} == {acme_key["id"], key_id_of(acme_admin)}
    unknown = "zzzzzzzzzzzz"
    for key_id in (dev_key["id"], key_id_of(dev_admin), unknown):
        for method, path in [("GET", f"{KEYS}/{key_id}"), ("POST", f"{KEYS}/{key_id}/rotate"),
                             ("POST", f"{KEYS}/{key_id}/revoke")]:
            response = await client.request(method, path, headers=bearer(acme_admin))
            assert response.status_code == 404, (method, path, response.text)
            assert error_of(response)["code"] == "not_found"
    assert (await client.get("/v1/jobs", headers=bearer(dev_key["key"]))).status_code == 200  # untouched
    # No way to make a key for another tenant over HTTP.
    response = await client.post(KEYS, json={"name": "x", "tenant": "dev"}, headers=bearer(acme_admin))
    assert response.status_code == 422 and error_of(response)["details"][0]["field"] == "tenant"
    # Jobs stay apart too: acme's SQL key sees none of dev's jobs.
    job = await submit(client, headers=bearer(dev_key["key"]))
    assert (await client.get(f"/v1/jobs/{job['id']}", headers=bearer(acme_key["key"]))).status_code == 404


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (KEYS, {"name": ""}, "name"),
        (KEYS, {"name": "x\u0000"}, "name"),
        (KEYS, {"name": "x" * 129}, "name"),
        (KEYS, {"name": "x", "scopes": ["root"]}, "scopes[0]"),
        (KEYS, {"name": "x", "scopes": []}, "scopes"),
        (KEYS, {"name": "x", "expires_in": 0}, "expires_in"),
        (KEYS, {"name": "x", "expires_in": 1.5}, "expires_in"),
        (KEYS, {"name": "x", "expires_in": 10**30}, "expires_in"),
        (KEYS, {}, "name"),
        ("rotate", {"grace_seconds": -1}, "grace_seconds"),
        ("rotate", {"grace_seconds": 10**9}, "grace_seconds"),
        ("rotate", {"grace_seconds": "soon"}, "grace_seconds"),
        ("rotate", {"expires_in": 0}, "expires_in"),
    ],
)
async def test_bad_input_is_a_422_naming_the_field(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], field: str
) -> None:
    admin = admin_key(client)
    if path == "rotate":
        path = f"{KEYS}/{(await create(client, admin))['id']}/rotate"
    response = await client.post(path, json=body, headers=bearer(admin))
    assert response.status_code == 422, response.text
    assert error_of(response)["details"][0]["field"] == field


async def test_malformed_ids_are_404_and_not_echoed_at_length(client: httpx.AsyncClient) -> None:
    admin = admin_key(client)
    for key_id in ["x" * 2000, "ABCDEFGHIJKL", "abc%00def", "lr_abc"]:
        response = await client.get(f"{KEYS}/{key_id}", headers=bearer(admin))
        assert response.status_code == 404, response.text
        assert len(response.text) < 400


async def test_openapi_documents_the_admin_routes_and_their_errors(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    envelope = spec["components"]["schemas"]["ErrorEnvelope"]
    assert envelope["required"] == ["error"]
    expected = {
        ("post", KEYS): {"201", "401", "403", "413", "422", "503"},
        ("get", KEYS): {"200", "401", "403", "422", "503"},
        ("get", KEYS + "/{key_id}"): {"200", "401", "403", "404", "422", "503"},
        ("post", KEYS + "/{key_id}/rotate"): {"201", "401", "403", "404", "409", "413", "422", "503"},
        ("post", KEYS + "/{key_id}/revoke"): {"200", "401", "403", "404", "422", "503"},
    }
    for (method, path), statuses in expected.items():
        responses = spec["paths"][path][method]["responses"]
        assert set(responses) == statuses, (method, path, set(responses))
        for status, documented in responses.items():
            schema = documented["content"]["application/json"]["schema"]
            if status.startswith(("4", "5")):
                assert schema == {"$ref": "#/components/schemas/ErrorEnvelope"}, (method, path, status)
    assert "key" not in spec["components"]["schemas"]["KeyView"]["properties"]


# --- the cache in front of SQL (in-process, with a clock the test moves) ------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def statements(engine: Engine) -> Iterator[list[str]]:
    """Every SQL statement run on this test's engine."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    yield seen
    event.remove(engine, "before_cursor_execute", record)


async def test_a_cached_key_costs_no_sql_and_a_revocation_elsewhere_bites_after_the_ttl(
    settings: Settings, engine: Engine, statements: list[str]
) -> None:
    clock = Clock()
    auth = Authenticator(settings.model_copy(update={"api_key_cache_seconds": 5.0}), engine, clock)
    other_replica = ApiKeyStore.for_settings(engine, settings)
    row, key = other_replica.create("dev", "svc")
    header = f"Bearer {key}"

    assert (await auth.authenticate(header)).tenant == "dev"
    reads = len(statements)
    assert reads > 0
    for _ in range(50):
        principal = await auth.authenticate(header)
    assert principal.key_id == row.id and principal.scopes == {"jobs"}
    assert len(statements) == reads  # 50 requests, no SQL

    other_replica.revoke(row.id)  # as another gateway would: this process is not told
    clock.now += 4.9
    assert (await auth.authenticate(header)).tenant == "dev"  # still cached: the documented delay
    clock.now += 0.1
    with pytest.raises(Exception, match="API key revoked"):
        await auth.authenticate(header)


async def test_last_used_is_written_at_most_once_a_minute(settings: Settings, engine: Engine) -> None:
    auth = Authenticator(settings.model_copy(update={"api_key_cache_seconds": 0.0}), engine, Clock())
    store = auth.store
    row, key = store.create("dev", "svc")
    await auth.authenticate(f"Bearer {key}")
    first = store.get(row.id).last_used_at
    assert first is not None
    for _ in range(5):  # no cache: every request reads SQL, yet writes nothing new
        await auth.authenticate(f"Bearer {key}")
    assert store.get(row.id).last_used_at == first
    with Session(engine) as session:  # a minute later (moved back in SQL), the next read records use again
        stored = session.get(ApiKey, row.id)
        assert stored is not None
        stored.last_used_at = datetime.now(UTC) - timedelta(seconds=61)
        session.add(stored)
        session.commit()
    await auth.authenticate(f"Bearer {key}")
    latest = store.get(row.id).last_used_at
    assert latest is not None and _naive(latest) > _naive(first)


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _naive(value: datetime) -> datetime:
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value


async def test_a_database_outage_is_a_503_for_sql_keys_and_bootstrap_keys_still_work(
    lite_client: httpx.AsyncClient,
) -> None:
    auth = gateway_of(lite_client).auth
    _, key = auth.store.create("dev", "svc")
    working = auth.store.engine
    dead = create_db_engine(Settings(database_url="postgresql://nobody@127.0.0.1:1/none"))
    auth.store.engine = dead  # an unreachable database behind an uncached key
    try:
        response = await lite_client.get("/v1/tasks", headers=bearer(key))
        assert response.status_code == 503, response.text
        assert error_of(response)["details"] == {"dependency": "database"}
        assert (await lite_client.get("/v1/tasks", headers=DEV)).status_code == 200  # needs no SQL for its key
    finally:
        auth.store.engine = working
        dead.dispose()
    assert (await lite_client.get("/v1/tasks", headers=bearer(key))).status_code == 200
