"""Retention (docs/design.md §3): per-job cap, TTL after the end, idle TTL, index cleanup, gap events."""

from __future__ import annotations

import time

import pytest
import redis

from broker import Keyspace, PublisherConfig, SyncPublisher
from gateway.cli.redis_server import RedisServer
from tests.support.fixture_types import MakeGateway
from tests.support.sse_client import parse

pytestmark = pytest.mark.server_matrix  # once per server (tests/conftest.py)


def test_stream_cap_trims_old_entries_but_counts_stay_exact(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    config = PublisherConfig(stream_maxlen=1000, max_batch_entries=100)
    with SyncPublisher(redis_server.url, config=config) as pub:
        for i in range(5000):
            pub.job("capped").step("s").info(f"e{i}")
    key = Keyspace().stream("capped")
    assert 1000 <= redis_client.xlen(key) < 1200, "MAXLEN ~ keeps about the cap"
    meta = redis_client.hgetall(Keyspace().meta("capped"))
    assert int(meta[b"n"]) == 5000, "meta counts what was written, not what is retained"


def test_ttl_idle_then_ended_and_index_cleanup(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    ks = Keyspace()
    config = PublisherConfig(idle_ttl_s=1000, ended_ttl_s=50)
    with SyncPublisher(redis_server.url, config=config) as pub:
        pub.job("ttl").info("running")
        assert pub.flush().ok
        assert 990 <= redis_client.ttl(ks.stream("ttl")) <= 1000
        assert 990 <= redis_client.ttl(ks.meta("ttl")) <= 1000
        pub.job("ttl").end("completed")
        assert pub.flush().ok
        assert 40 <= redis_client.ttl(ks.stream("ttl")) <= 50 and 40 <= redis_client.ttl(ks.meta("ttl")) <= 50
        pub.job("ttl").info("a late line is refused: the job has ended")
        late = pub.flush()
        assert late.rejected == 1 and not late.ok, "reported, never silent"
    assert redis_client.ttl(ks.meta("ttl")) <= 50, "the ended TTL holds"
    assert redis_client.xlen(ks.stream("ttl")) == 2
    index = ks.index(ks.partition("ttl"))
    neighbour = next(f"ttl-{i}" for i in range(1000) if ks.partition(f"ttl-{i}") == ks.partition("ttl"))
    redis_client.zadd(index, {"long-gone": time.time() * 1000 - 2_000_000})  # idle for longer than 1000 s
    with SyncPublisher(redis_server.url, config=config) as pub:
        pub.job(neighbour).info("any write to the partition cleans its index")
    assert redis_client.zscore(index, "long-gone") is None and redis_client.zscore(index, "ttl") is not None


def test_every_key_of_a_job_takes_the_ended_ttl_whoever_writes_the_end(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """The seq fingerprints are a key per src: a src that wrote earlier, not in the batch with the
    end entry, must not outlive the job by the difference between the idle and the ended TTL."""
    ks = Keyspace()
    srcs = ("first", "second", "ender")
    for src in srcs:
        config = PublisherConfig(idle_ttl_s=1000, ended_ttl_s=50, src=src)
        with SyncPublisher(redis_server.url, config=config) as pub:
            job = pub.job("ttl-all")
            job.info(f"{src} was here")
            if src == "ender":
                job.end("completed")
            assert pub.flush().ok
    seqs = ks.job_keys("ttl-all")[3]
    keys = [ks.stream("ttl-all"), ks.meta("ttl-all"), *(f"{seqs}:{src}" for src in srcs)]
    assert all(redis_client.exists(k) for k in keys)
    assert all(0 < redis_client.ttl(k) <= 50 for k in keys), [redis_client.ttl(k) for k in keys]


async def test_a_cursor_older_than_retention_gets_a_gap_event(
    make_gateway: MakeGateway, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    config = PublisherConfig(stream_maxlen=200, max_batch_entries=50)
    with SyncPublisher(redis_server.url, config=config) as pub:
        job = pub.job("old")
        job.info("the very first entry")
        assert pub.flush().ok
        first = redis_client.xrange(Keyspace().stream("old"), count=1)[0][0].decode()
        for i in range(3000):
            job.step("s").info(f"e{i}")
        job.end("completed")
    client = await make_gateway()
    body = await (await client.get("/v1/jobs/old/stream", headers={"Last-Event-ID": first})).read()
    events = parse(body).events
    oldest = redis_client.xrange(Keyspace().stream("old"), count=1)[0][0].decode()
    assert events[0].event == "gap" and events[0].json() == {
        "after": first, "first_available": oldest, "reason": "trimmed"
    }  # fmt: skip
    assert events[1].id == oldest and events[-1].event == "end"


async def test_replay_says_when_the_range_it_reads_was_trimmed(
    make_gateway: MakeGateway, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """Replay gave no sign that a range was trimmed (the stream says so with a ``gap`` event)."""
    config = PublisherConfig(stream_maxlen=200, max_batch_entries=50)
    with SyncPublisher(redis_server.url, config=config) as pub:
        job = pub.job("cut")
        job.info("the very first entry")
        assert pub.flush().ok
        first = redis_client.xrange(Keyspace().stream("cut"), count=1)[0][0].decode()
        for i in range(3000):
            job.step("s").info(f"e{i}")
        job.end("completed")
    client = await make_gateway()
    oldest = redis_client.xrange(Keyspace().stream("cut"), count=1)[0][0].decode()
    trimmed = {"after": "0-0", "first_available": oldest, "reason": "trimmed"}
    from_start = await (await client.get("/v1/jobs/cut/logs?limit=10")).json()
    assert from_start["gap"] == trimmed and from_start["entries"][0]["id"] == oldest
    after_first = await (await client.get(f"/v1/jobs/cut/logs?limit=10&after={first}")).json()
    assert after_first["gap"] == {**trimmed, "after": first}
    inside = await (await client.get(f"/v1/jobs/cut/logs?limit=10&after={from_start['next']}")).json()
    assert inside["gap"] is None, "a cursor inside what is kept lost nothing"
    newest = await (await client.get("/v1/jobs/cut/logs?order=desc&limit=10")).json()
    assert newest["gap"] is None, "a descending page says it once it reaches the oldest entry kept"
    second = from_start["entries"][1]["id"]
    last = await (await client.get(f"/v1/jobs/cut/logs?order=desc&limit=500&before={second}")).json()
    assert [e["id"] for e in last["entries"]] == [oldest] and last["next"] is None
    assert last["gap"] == trimmed
    download = await client.get("/v1/jobs/cut/logs?format=ndjson")
    assert download.headers["Logbroker-Gap"] == f"after=0-0, first_available={oldest}, reason=trimmed"
    assert (await download.text()).splitlines()[0].startswith(f'{{"id":"{oldest}"')
