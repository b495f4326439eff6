"""Sentinel URLs (sentinel.py) and the broker URL setting: parsing, kombu's form, and where the broker goes."""

from __future__ import annotations

import pytest

from longrun_common import sentinel
from longrun_common.celery_app import create_celery
from longrun_common.redis_clients import sync_redis
from longrun_common.settings import Settings

pytestmark = pytest.mark.unit


def test_sentinel_url_names_hosts_master_db_and_password() -> None:
    target = sentinel.parse("redis+sentinel://:s3cret@10.0.0.1:26380,sentinel-b/mymaster/2")
    assert target == sentinel.SentinelTarget((("10.0.0.1", 26380), ("sentinel-b", 26379)), "mymaster", 2,
                                             None, "s3cret")
    assert sentinel.parse("sentinel://h:1/m") == sentinel.SentinelTarget((("h", 1),), "m")
    assert sentinel.parse("redis://127.0.0.1:6379/0") is None
    assert sentinel.parse("rediss://h:6380/1") is None


@pytest.mark.parametrize("url", ["redis+sentinel://h:26379", "redis+sentinel://h:26379/m/x",
                                 "sentinel:///m/0", "redis+sentinel://:pw@h:port/m"])
def test_a_malformed_sentinel_url_is_refused_without_its_password(url: str) -> None:
    with pytest.raises(ValueError, match="Sentinel URL") as caught:
        sentinel.parse(url)
    assert "pw" not in str(caught.value)


def test_kombu_gets_its_own_sentinel_form_and_the_master_name() -> None:
    assert sentinel.kombu_broker("redis+sentinel://:pw@a:1,b:2/mymaster/3") == (
        "sentinel://:pw@a:1/3;sentinel://:pw@b:2/3", {"master_name": "mymaster"})
    assert sentinel.kombu_broker("redis://h:6379/0") == ("redis://h:6379/0", {})


def test_broker_defaults_to_the_event_bus_and_may_be_its_own() -> None:
    assert Settings(redis_url="redis://bus:6379/0").celery_broker_url == "redis://bus:6379/0"
    split = Settings(redis_url="redis://bus:6379/0", broker_url="redis://queues:6379/1")
    assert create_celery(split).conf.broker_url == "redis://queues:6379/1"
    on_sentinel = create_celery(Settings(broker_url="redis+sentinel://s:26379/mymaster/0"))
    assert on_sentinel.conf.broker_url == "sentinel://s:26379/0"
    assert on_sentinel.conf.broker_transport_options["master_name"] == "mymaster"


def test_an_event_bus_client_through_sentinel_asks_for_the_named_master() -> None:
    client = sync_redis("redis+sentinel://127.0.0.1:1/mymaster/4")  # no I/O until first use
    pool = client.connection_pool
    assert pool.service_name == "mymaster"  # type: ignore[attr-defined]
    assert pool.connection_kwargs["db"] == 4
    client.close()


def test_asyncio_clients_through_sentinel_are_built_for_the_hub_and_gateway() -> None:
    from longrun_common.redis_clients import async_blocking_redis, async_pool, async_redis

    url = "redis+sentinel://127.0.0.1:1/mymaster/5"
    for pool in (async_pool(url), async_redis(url).connection_pool,
                 async_blocking_redis(url, max_connections=7, timeout=1).connection_pool):
        assert pool.service_name == "mymaster"  # type: ignore[attr-defined]
        assert pool.connection_kwargs["db"] == 5
    assert async_blocking_redis(url, max_connections=7, timeout=1).connection_pool.max_connections == 7
