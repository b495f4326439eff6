"""Redis Sentinel URLs, for the event bus (`LONGRUN_REDIS_URL`) and the broker (`LONGRUN_BROKER_URL`) alike.

One form for both, since redis-py's `from_url` has none and kombu's (`sentinel://h:p;sentinel://h2:p` plus a
`master_name` transport option) cannot name the master in the URL:

    redis+sentinel://[[user]:password@]host:port[,host:port…]/<master>[/<db>]     (`sentinel://` also accepted)

The hosts are the Sentinels (port 26379 when left out); the password and db are the master's. Clients built
from it ask a Sentinel for the current master on every (re)connect, so they follow a failover. The broker URL
is translated for kombu's `sentinel` transport (`kombu_broker`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import redis.asyncio.sentinel as async_sentinel
import redis.sentinel

if TYPE_CHECKING:
    import redis.asyncio as aioredis

SCHEMES = ("redis+sentinel", "sentinel")
DEFAULT_PORT = 26379


@dataclass(frozen=True)
class SentinelTarget:
    """A master named `master`, found through the Sentinels at `hosts`."""

    hosts: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None

    def master_options(self) -> dict[str, Any]:
        return {"db": self.db, "username": self.username, "password": self.password}


def parse(url: str) -> SentinelTarget | None:
    """The Sentinel target of `url`, or None for any other URL (`redis://`, `rediss://`, `unix://`)."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        return None
    auth, _, hostlist = parts.netloc.rpartition("@")
    username, _, password = auth.partition(":")
    hosts = []
    for item in filter(None, hostlist.split(",")):
        host, colon, port = item.rpartition(":")
        if not colon:
            host, port = item, str(DEFAULT_PORT)
        if not host or not port.isdigit():
            raise ValueError(f"Sentinel URL {_redact(url)!r}: {item!r} is not host:port")
        hosts.append((host.strip("[]"), int(port)))
    path = [unquote(p) for p in parts.path.split("/") if p]
    if not hosts or not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError(f"Sentinel URL {_redact(url)!r}: use {parts.scheme}://host:port[,host:port…]/master[/db]")
    return SentinelTarget(tuple(hosts), path[0], int(path[1]) if len(path) == 2 else 0,
                          unquote(username) or None, unquote(password) or None)


def sync_client(target: SentinelTarget, options: dict[str, Any]) -> redis.Redis[bytes]:
    """A blocking client on the current master; `options` are the connection options of redis_clients.py."""
    manager = redis.sentinel.Sentinel(list(target.hosts), sentinel_kwargs=_sentinel_options(options), **options)
    client: redis.Redis[bytes] = manager.master_for(target.master, **target.master_options())
    return client


def async_pool(target: SentinelTarget, options: dict[str, Any]) -> aioredis.ConnectionPool[Any]:
    """An asyncio pool whose connections go to the current master (a plain pool: there is no blocking one)."""
    manager = async_sentinel.Sentinel(list(target.hosts), sentinel_kwargs=_sentinel_options(options), **options)
    pool: aioredis.ConnectionPool[Any] = async_sentinel.SentinelConnectionPool(
        target.master, manager, **options, **target.master_options())
    return pool


def kombu_broker(url: str) -> tuple[str, dict[str, Any]]:
    """The broker URL and extra transport options for kombu: a Sentinel URL becomes kombu's `sentinel://` list
    with `master_name`; any other URL is returned as it is."""
    target = parse(url)
    if target is None:
        return url, {}
    auth = ""
    if target.password is not None:
        auth = f"{target.username or ''}:{target.password}@"
    urls = ";".join(f"sentinel://{auth}{host}:{port}/{target.db}" for host, port in target.hosts)
    return urls, {"master_name": target.master}


def _sentinel_options(options: dict[str, Any]) -> dict[str, Any]:
    """Timeouts for talking to the Sentinels themselves (they have no password here; the master's is not theirs)."""
    return {k: v for k, v in options.items() if k.startswith("socket_")}


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]).geturl()
