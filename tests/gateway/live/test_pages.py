"""Pages kept for clients behind the ring: one client's read from Redis serves the job's other
lagging clients, exactly (every entry once, in order), never across a gap, within a byte bound."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis

from broker.keys import Keyspace
from gateway.api.state import GATEWAY
from gateway.cli.redis_server import RedisServer
from gateway.ids import from_redis
from gateway.live.budget import FIRST_COUNT, PageBudget
from gateway.live.items import FRAME, SID, make_item
from gateway.live.pages import Pages
from tests.support.fixture_types import MakeGateway
from tests.support.helpers import read_job
from tests.support.jobs import publish_entries
from tests.support.sse_client import parse

pytestmark = pytest.mark.server_matrix  # once per server (tests/conftest.py)


def items_of(url: str, job: str) -> list[Any]:
    raw = redis.Redis.from_url(url).xrange(Keyspace().stream(job))
    return [make_item(job, i, f) for i, f in raw]


def test_a_kept_page_serves_every_cursor_it_covers(redis_server: RedisServer) -> None:
    publish_entries(redis_server.url, "p", 30, end=False)
    items = items_of(redis_server.url, "p")
    pages = Pages(max_bytes=1 << 20, budget=PageBudget(1 << 20, 500))
    pages.keep(items[4][SID], items[5:20])  # read after entry 4: covers cursors 4..18
    assert pages.after(items[3][SID]) is None, "before the page: entry 4 is not in it"
    assert pages.after(items[4][SID]) == items[5:20]
    assert pages.after(items[11][SID]) == items[12:20]
    assert pages.after(items[19][SID]) is None, "at its last entry: nothing left to serve"
    assert pages.after(items[25][SID]) is None
    assert pages.hits == 2


def test_pages_are_bounded_oldest_first(redis_server: RedisServer) -> None:
    publish_entries(redis_server.url, "b", 40, end=False)
    items = items_of(redis_server.url, "b")
    room = sum(len(i[FRAME]) for i in items[11:31])  # for two of the pages
    pages = Pages(max_bytes=room, budget=PageBudget(1 << 20, 500))
    pages.keep(items[0][SID], items[1:11])
    pages.keep(items[10][SID], items[11:21])
    pages.keep(items[20][SID], items[21:31])
    assert pages.after(items[1][SID]) is None, "the oldest page went"
    assert pages.after(items[15][SID]) == items[16:21]
    assert pages.after(items[25][SID]) == items[26:31]
    pages.keep(items[0][SID], [])  # an empty read keeps nothing
    assert pages.after(items[0][SID]) is None
    pages.keep(items[0][SID], items[1:40])  # larger than the whole bound: not kept, and all go
    assert pages.after(items[1][SID]) is None and pages.after(items[25][SID]) is None


async def test_lagging_clients_share_pages_and_each_gets_everything(
    make_gateway: MakeGateway, redis_server: RedisServer
) -> None:
    publish_entries(redis_server.url, "lag", 3000)
    client = await make_gateway(ring_entries=100, page_entries=200)  # everything is behind the ring
    gw = client.app[GATEWAY]

    async def follow() -> bytes:
        resp = await client.get("/v1/jobs/lag/stream", headers={"Last-Event-ID": "0-1"})
        assert resp.status == 200
        return await asyncio.wait_for(resp.read(), 60)

    bodies = await asyncio.gather(*(follow() for _ in range(4)))
    stored = read_job(redis.Redis.from_url(redis_server.url), "lag")
    for body in bodies:
        assert [e.id for e in parse(body).events] == [e["id"] for e in stored]
    hits, reads = gw.metrics.page_hits._value.get(), gw.metrics.pages._value.get()
    assert hits > reads, f"most pages came from another client's read ({hits} hits, {reads} reads)"


async def test_a_kept_page_never_hides_a_gap(make_gateway: MakeGateway, redis_server: RedisServer) -> None:
    publish_entries(redis_server.url, "gap", 400, end=False)
    r = redis.Redis.from_url(redis_server.url)
    key = Keyspace().stream("gap")
    ids = [i for i, _ in r.xrange(key)]
    client = await make_gateway(ring_entries=10, page_entries=50)
    gw = client.app[GATEWAY]
    r.xtrim(key, minid=ids[100], approximate=False)  # entries 0..99 are gone
    feed_items = items_of(redis_server.url, "gap")
    async with gw.hub.ring("gap") as feed:
        feed.pages.keep(from_redis(ids[150]), feed_items[51:100])  # a page read after entry 150
        resp = await client.get("/v1/jobs/gap/stream", headers={"Last-Event-ID": ids[10].decode()})
        buf = b""
        while buf.count(b"\n\n") < 5:
            buf += await asyncio.wait_for(resp.content.readany(), 10)
        resp.close()
    events = parse(buf).events
    assert events[0].event == "gap", "a cursor in the trimmed range gets its gap, not a kept page"
    assert events[1].id == ids[100].decode()


def test_reads_start_small_after_big_entries_and_grow_back_by_doubling() -> None:
    budget = PageBudget(max_bytes=100_000, max_entries=500)
    assert budget.count() == FIRST_COUNT, "sizes unknown: a few entries"
    budget.saw(16, 16 * 50_000)
    assert budget.count() == 2, "two entries of 50 KB fill the budget"
    for expected in (4, 8, 16, 32, 64, 128, 256, 500, 500):  # small entries again: doubling back
        budget.saw(budget.count(), budget.count() * 100)
        assert budget.count() == expected
    budget.saw(1, 400_000)
    assert budget.count() == 1, "one entry past the budget: one at a time, never zero"
