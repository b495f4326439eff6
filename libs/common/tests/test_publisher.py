"""The publisher against a real Redis: seq contiguity, snapshot/stream agreement, fencing, leases."""

from __future__ import annotations

import json
import threading

import pytest
import redis

from longrun_common.events import Progress
from longrun_common.keys import Keys
from longrun_common.publisher import _SCRIPT, EventSpec, Publisher
from longrun_common.reader import Reader
from longrun_common.states import JobStatus
from tests.support.servers import RedisServer

pytestmark = pytest.mark.integration


def spec(job_id: str, status: JobStatus = JobStatus.RUNNING, attempt: int = 1, **kw: object) -> EventSpec:
    return EventSpec(job_id=job_id, type="progress", status=status, attempt=attempt, **kw)  # type: ignore[arg-type]


def test_seq_is_contiguous_and_stream_matches_snapshot(redis_client: redis.Redis, key_prefix: str) -> None:
    keys = Keys(key_prefix)
    pub, reader = Publisher(keys), Reader(keys)
    pubsub = redis_client.pubsub()
    pubsub.subscribe(keys.channel("j1"))
    pubsub.get_message(timeout=1)
    for i in range(1, 6):
        result = pub.publish(redis_client, spec("j1", progress=Progress(current=i, total=5)))
        assert result.seq == i and not result.fenced
    snap = reader.snapshot(redis_client, "j1")
    assert snap is not None and snap["seq"] == 5 and snap["progress"]["current"] == 5
    events = reader.events_after(redis_client, "j1", 2)
    assert [e["seq"] for e in events] == [3, 4, 5]
    live = [json.loads(m["data"]) for m in iter(lambda: pubsub.get_message(timeout=1), None)]
    assert [e["seq"] for e in live] == [1, 2, 3, 4, 5]
    assert live[-1] == events[-1]


def test_concurrent_publishers_never_share_a_seq(redis_url: str, key_prefix: str) -> None:
    keys = Keys(key_prefix)
    pub = Publisher(keys)

    def burst() -> None:
        client = redis.Redis.from_url(redis_url)
        for _ in range(200):
            pub.publish(client, spec("j2"))
        client.close()

    threads = [threading.Thread(target=burst) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    client = redis.Redis.from_url(redis_url)
    events = Reader(keys).events_after(client, "j2", 0)
    assert [e["seq"] for e in events] == list(range(1, 801))


def test_stale_attempt_is_fenced(redis_client: redis.Redis, key_prefix: str) -> None:
    pub = Publisher(Keys(key_prefix))
    assert pub.publish(redis_client, spec("j3", attempt=1)).seq == 1
    assert pub.publish(redis_client, spec("j3", JobStatus.RETRYING, attempt=2)).seq == 2
    stale = pub.publish(redis_client, spec("j3", attempt=1))
    assert stale.fenced
    assert pub.publish(redis_client, spec("j3", JobStatus.SUCCEEDED, attempt=2)).seq == 3
    # The same attempt cannot write after the job ended either.
    assert pub.publish(redis_client, spec("j3", attempt=2)).fenced


def test_lease_and_cancel_flag(redis_client: redis.Redis, key_prefix: str) -> None:
    keys = Keys(key_prefix)
    pub = Publisher(keys)
    pub.publish(redis_client, spec("j4", lease_until=1234.0))
    assert redis_client.zscore(keys.leases(), "j4") == 1234.0
    redis_client.hset(keys.job("j4"), "cancel", "1")
    assert pub.heartbeat(redis_client, "j4", 1, 2000.0) == 1
    assert pub.heartbeat(redis_client, "j4", 0, 2000.0) == -1
    done = pub.publish(redis_client, spec("j4", JobStatus.CANCELLED, lease_until=0.0))
    assert done.cancel_requested
    assert redis_client.zscore(keys.leases(), "j4") is None
    assert redis_client.ttl(keys.job("j4")) > 0


def test_lost_hash_continues_after_the_known_seq(redis_client: redis.Redis, key_prefix: str) -> None:
    keys = Keys(key_prefix)
    pub = Publisher(keys)
    for _ in range(3):
        pub.publish(redis_client, spec("j5", seq_floor=0))
    redis_client.delete(keys.job("j5"), keys.stream("j5"))  # Redis lost the job (restart, flush)
    assert pub.publish(redis_client, spec("j5", seq_floor=3)).seq == 4
    assert pub.publish(redis_client, spec("j5", seq_floor=0)).seq == 5  # the floor only seeds a missing hash


def test_publish_many_after_redis_lost_its_scripts(key_prefix: str) -> None:
    """`publish_many` pipelines bare EVALSHAs (no SCRIPT EXISTS first): after a restart that lost the script,
    it loads it and publishes every event exactly once."""
    keys = Keys(key_prefix)
    pub, reader = Publisher(keys), Reader(keys)
    server = RedisServer().start()
    try:
        with redis.Redis.from_url(server.url) as client:
            assert [p.seq for p in pub.publish_many(client, [spec("j1"), spec("j2")])] == [1, 1]
        server.restart()  # no persistence: the events and the loaded script are gone
        with redis.Redis.from_url(server.url) as client:
            assert not client.script_exists(pub._script(client, _SCRIPT).sha)[0]
            assert [p.seq for p in pub.publish_many(client, [spec("j3"), spec("j4"), spec("j3")])] == [1, 1, 2]
            assert [e["seq"] for e in reader.events_after(client, "j3", 0)] == [1, 2]
            assert [e["seq"] for e in reader.events_after(client, "j4", 0)] == [1]
    finally:
        server.stop()
