"""Operations: half-open clients reaped, graceful shutdown, health, readiness and metrics."""

from __future__ import annotations

import asyncio

from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer

from broker import Publisher
from gateway.api import create_app
from gateway.api.state import GATEWAY
from gateway.cli.redis_server import RedisServer
from gateway.settings import GatewaySettings
from tests.support.fixture_types import MakeGateway
from tests.support.helpers import stuck_client, wait_for_subscribers
from tests.support.jobs import Line, publish_entries, publish_job
from tests.support.sse_client import parse

BIG = "x" * 20_000


async def test_half_open_client_is_reaped_and_others_are_unaffected(
    make_gateway: MakeGateway,
    redis_server: RedisServer,
) -> None:
    client = await make_gateway(write_timeout_s=0.5, heartbeat_s=0.2)
    gw = client.app[GATEWAY]
    with stuck_client(client.port, "ho"):  # a client that never reads
        healthy = await client.get("/v1/jobs/ho/stream")
        await wait_for_subscribers(gw, 2)
        async with Publisher(redis_server.url) as pub:
            job = pub.job("ho")
            for i in range(1500):  # 30 MB: far more than socket buffers hold
                await job.step("s").info(f"{i} {BIG}")
            await job.end("completed")
        body = await asyncio.wait_for(healthy.read(), 60)
        assert len(parse(body).events) == 1501
        for _ in range(200):
            if gw.metrics.reaped._value.get() == 1 and not gw.hub.subscribers:
                break
            await asyncio.sleep(0.05)
        assert gw.metrics.reaped._value.get() == 1, (
            "the client that never reads is closed after the write timeout"
        )
        assert not gw.hub.subscribers
        feed = gw.hub.rings["ho"]
        assert feed.nbytes <= gw.settings.ring_bytes


async def test_shutdown_ends_open_streams_cleanly(redis_server: RedisServer) -> None:
    app = create_app(GatewaySettings(redis_url=redis_server.url, heartbeat_s=0.2))
    server = TestServer(app)
    await server.start_server()
    async with ClientSession() as session:
        resp = await session.get(server.make_url("/v1/jobs/shut/stream"))
        await asyncio.wait_for(resp.content.readuntil(b"retry: 2000\n\n"), 5)
        assert len(app[GATEWAY].hub.subscribers) == 1
        closing = asyncio.create_task(server.close())
        rest = await asyncio.wait_for(resp.read(), 10)  # the chunked body ends properly: no error
        await closing
    assert rest in (b"", b": heartbeat\n\n") or set(rest.split(b"\n\n")) <= {b": heartbeat", b""}


async def test_health_readiness_and_metrics(make_gateway: MakeGateway, redis_server: RedisServer) -> None:
    client = await make_gateway(heartbeat_s=0.2)
    assert await (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status == 200 and (await ready.json())["status"] == "ready"
    await asyncio.to_thread(publish_entries, redis_server.url, "m", 10)
    body = await (await client.get("/v1/jobs/m/stream")).read()
    assert len(parse(body).events) == 11
    text = await (await client.get("/metrics")).text()
    assert "logbroker_sse_entries_sent_total 11.0" in text
    assert "logbroker_dropped_entries_total 0.0" in text
    assert "logbroker_redis_read_seconds_count" in text and "logbroker_sse_client_lag_seconds_bucket" in text
    redis_server.pause()
    try:
        not_ready = await client.get("/readyz")
        assert not_ready.status == 503 and (await not_ready.json())["error"]["code"] == "not_ready"
        assert (await client.get("/healthz")).status == 200
    finally:
        redis_server.resume()
    assert (await client.get("/readyz")).status == 200


async def test_unknown_routes_and_methods_answer_json(make_gateway: MakeGateway) -> None:
    client = await make_gateway()
    missing = await client.get("/v2/nothing")
    assert missing.status == 404 and (await missing.json())["error"]["code"] == "not_found"
    wrong = await client.delete("/v1/jobs/x/stream")
    assert wrong.status == 405 and (await wrong.json())["error"]["code"] == "method_not_allowed"


def test_create_app_needs_a_redis_url() -> None:
    import pytest

    with pytest.raises(ValueError, match="LOGBROKER_REDIS_URL"):
        create_app(GatewaySettings(redis_url=None))
    assert isinstance(create_app(GatewaySettings(redis_url="redis://127.0.0.1:1/0")), web.Application)
    with pytest.raises(ValueError, match="auth_secret"):  # HS256 keys shorter than 32 bytes are refused
        GatewaySettings(redis_url="redis://127.0.0.1:1/0", auth_secret="s3cret")


async def test_a_redis_refusal_is_a_json_500_not_a_crash(
    make_gateway: MakeGateway, redis_server: RedisServer
) -> None:
    import redis as redis_lib

    client = await make_gateway()
    keys = client.app[GATEWAY].keyspace.job_keys("wrongtype")
    redis_lib.Redis.from_url(redis_server.url).set(keys[1], "not a hash")  # someone else's key in our place
    resp = await client.get("/v1/jobs/wrongtype")
    assert resp.status == 500 and (await resp.json())["error"]["code"] == "redis_error"
    assert (await client.get("/healthz")).status == 200


async def test_close_streams_waits_for_every_stream_and_aborts_a_stuck_one(
    make_gateway: MakeGateway, redis_server: RedisServer
) -> None:
    """The hub's shutdown stops every stream and returns only once their handlers are done; a
    client that never reads (its last bytes cannot go) is aborted after the grace, not waited for."""
    lines = [Line(f"{i} {BIG}", "s", "w") for i in range(300)]  # 6 MB: more than the sockets hold
    await asyncio.to_thread(publish_job, redis_server.url, "big", lines, end=None)
    client = await make_gateway(write_timeout_s=60)
    hub = client.app[GATEWAY].hub
    readers = [await client.get("/v1/jobs/big/stream?after=$") for _ in range(3)]
    with stuck_client(client.port, "big"):
        await wait_for_subscribers(client.app[GATEWAY], 4)
        for _ in range(300):  # until the stuck one waits in a write its client will never take
            if any(sub.writing_since is not None for sub in hub.subscribers):
                break
            await asyncio.sleep(0.01)
        assert any(sub.writing_since is not None for sub in hub.subscribers)
        started = asyncio.get_running_loop().time()
        await hub.close_streams(5.0)
        took = asyncio.get_running_loop().time() - started
        assert hub.clients == 0, "returned only once every handler was done"
        assert 0.9 < took < 3.0, f"{took:.1f}s: the stuck stream is aborted after the 1 s grace"
    for resp in readers:
        await asyncio.wait_for(resp.read(), 5)  # the readers' streams ended cleanly
