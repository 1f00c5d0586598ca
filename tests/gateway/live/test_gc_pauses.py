"""A full collection pauses every stream of a gateway process at once; these keep it short.

Measured with ``benchmarks/latency_c.py``: without them each full collection took 40-75 ms under
load (about one per 5 s run) and set part 2's p99; see benchmarks/README.md.
"""

from __future__ import annotations

import asyncio
import gc

import redis
from aiohttp import web

from broker.keys import Keyspace
from gateway.cli.redis_server import RedisServer
from gateway.cli.serve import freeze_startup_heap, serving_app
from gateway.ids import ZERO
from gateway.live.budget import PageBudget
from gateway.live.ring import Ring
from gateway.settings import GatewaySettings
from tests.support.jobs import Line, publish_job


def test_ring_items_leave_the_collector_after_one_collection(redis_server: RedisServer) -> None:
    """A NamedTuple item would stay tracked for good: the ring would be walked by every
    full collection (this fails with ``class Item(NamedTuple)``)."""
    lines = (Line(f"line {i}", "s", f"w{i % 3}", fields={"i": i}) for i in range(200))
    publish_job(redis_server.url, "gc", lines, end_named=False)
    raw = redis.Redis.from_url(redis_server.url).xrange(Keyspace().stream("gc"))
    feed = Ring("gc", Keyspace().stream("gc"), ZERO, 10_000, 1 << 20, page=PageBudget(1 << 20, 500))
    assert feed.append(raw) == 201
    items = feed.after(ZERO)
    assert items is not None and len(items) == 201
    gc.collect()
    assert [item for item in items if gc.is_tracked(item)] == []


def test_serve_freezes_the_heap_it_started_with() -> None:
    app = serving_app(GatewaySettings(redis_url="redis://127.0.0.1:1/0"), None)
    assert freeze_startup_heap in app.on_startup
    before = gc.get_freeze_count()
    try:
        asyncio.run(freeze_startup_heap(web.Application()))
        assert gc.get_freeze_count() > before
    finally:
        gc.unfreeze()
