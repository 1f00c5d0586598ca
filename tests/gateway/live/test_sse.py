"""The SSE route in-process (aiohttp test client) against a real redis-server: the exact wire
format, every start position, filters, end + 204, gaps, waiting for a job, slow clients."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestClient

from broker import Publisher, SyncPublisher
from gateway.api import create_app
from gateway.api.state import GATEWAY
from gateway.cli.redis_server import RedisServer
from gateway.settings import GatewaySettings
from tests.support.fixture_types import AiohttpClient, MakeGateway, ServerFactory
from tests.support.helpers import read_job
from tests.support.jobs import publish_entries
from tests.support.sse_client import parse

pytestmark = pytest.mark.server_matrix  # once per server (tests/conftest.py)


async def read_all(client: TestClient[Any, Any], path: str, headers: dict[str, str] | None = None) -> bytes:
    resp = await client.get(path, headers=headers or {})
    assert resp.status == 200, await resp.text()
    return await asyncio.wait_for(resp.read(), 20)


INJECTIONS = [
    "plain",
    "line one\nline two",
    "carriage\rreturn",
    "crlf\r\nline",
    "data: forged\n\nid: 1-0\nevent: end\n\n",
    "\n\n\n",
    ": not a comment",
    "nul \x00 and emoji 🎉 and \u2028 separator",
]


async def test_wire_bytes_and_no_injection(make_gateway: MakeGateway, redis_server: RedisServer) -> None:
    with SyncPublisher(redis_server.url) as pub:
        job = pub.job("wire", name="Wire")
        for i, msg in enumerate(INJECTIONS):
            job.step("st\u00e9p").worker("w").info(msg, note=msg, i=i)
        job.end("completed")
    client = await make_gateway(retry_ms=1234)
    resp = await client.get("/v1/jobs/wire/stream")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert resp.headers["Cache-Control"] == "no-cache" and resp.headers["X-Accel-Buffering"] == "no"
    raw = await resp.read()
    stored = read_job(redis.Redis.from_url(redis_server.url), "wire")
    first = stored[0]
    expected_first = (
        f"id: {first['id']}\ndata: {json.dumps(first, ensure_ascii=False, separators=(',', ':'))}\n\n"
    )
    assert raw.startswith(b"retry: 1234\n\n" + expected_first.encode())
    parsed = parse(raw)
    assert parsed.retry == 1234
    assert [e.event for e in parsed.events] == ["message"] * len(INJECTIONS) + ["end"]
    assert [e.id for e in parsed.events] == [e["id"] for e in stored]
    assert [e.json() for e in parsed.events] == stored
    assert [e.json()["msg"] for e in parsed.events[:-1]] == INJECTIONS
    assert [e.json()["fields"]["note"] for e in parsed.events[:-1]] == INJECTIONS


async def test_resume_with_last_event_id_gives_the_rest_exactly(
    make_gateway: MakeGateway, redis_server: RedisServer
) -> None:
    publish_entries(redis_server.url, "resume", 300)
    client = await make_gateway()
    seen: list[str] = []
    last = ""
    for cut in (1, 7, 50, 120, 10_000):  # reconnect after reading a few events each time
        resp = await client.get("/v1/jobs/resume/stream", headers={"Last-Event-ID": last} if last else {})
        if resp.status == 204:
            break
        buf = b""
        async for chunk in resp.content.iter_any():
            buf += chunk
            if len(parse(buf).events) >= cut:
                break
        resp.close()
        events = parse(buf.rsplit(b"\n\n", 1)[0] + b"\n\n").events[:cut]
        seen += [e.id for e in events]
        last = events[-1].id if events else last
        if events and events[-1].event == "end":
            break
    stored = [e["id"] for e in read_job(redis.Redis.from_url(redis_server.url), "resume")]
    assert seen == stored
    assert (await client.get("/v1/jobs/resume/stream", headers={"Last-Event-ID": stored[-1]})).status == 204


@pytest.mark.parametrize(
    ("query", "keep"),
    [
        ("step=b", lambda e: e["step"] == "b"),
        ("worker=w1", lambda e: e["worker"] == "w1"),
        ("level=warning", lambda e: e["level"] in ("warning", "error", "critical")),
        ("kind=status", lambda e: e["kind"] == "status"),
        (
            "step=a&worker=w2&level=warning",
            lambda e: (e["step"], e["worker"], e["level"]) == ("a", "w2", "warning"),
        ),
    ],
)
async def test_filters_still_advance_the_cursor(
    query: str, keep: Callable[[dict[str, Any]], bool], make_gateway: MakeGateway, redis_server: RedisServer
) -> None:
    with SyncPublisher(redis_server.url) as pub:
        job = pub.job("filt")
        for i in range(60):
            worker = job.step("a" if i % 2 else "b").worker(f"w{i % 3}")
            worker.log("warning" if i % 4 == 0 else "info", f"e{i}")
            if i % 10 == 0:
                worker.status("running")
        job.step("a").info("the last one is filtered out by most")  # ends the run with a skipped entry
    client = await make_gateway(heartbeat_s=0.2)
    resp = await client.get(f"/v1/jobs/filt/stream?{query}")
    buf = b""
    while b": heartbeat" not in buf:  # caught up: everything pending was written before idling
        buf += await asyncio.wait_for(resp.content.readany(), 5)
    resp.close()
    parsed = parse(buf)
    stored = read_job(redis.Redis.from_url(redis_server.url), "filt")
    assert [e.json() for e in parsed.events] == [e for e in stored if keep(e)]
    assert parsed.last_id == stored[-1]["id"], "Last-Event-ID must move past filtered entries"


async def test_tail_then_live_and_after_dollar(make_gateway: MakeGateway, redis_server: RedisServer) -> None:
    publish_entries(redis_server.url, "tail", 20, end=False)
    client = await make_gateway(heartbeat_s=0.2)
    tail = await client.get("/v1/jobs/tail/stream?tail=3")
    new = await client.get("/v1/jobs/tail/stream?after=$")
    tail_step = await client.get("/v1/jobs/tail/stream?tail=2&worker=w1")
    await asyncio.sleep(0.3)
    async with Publisher(redis_server.url) as pub:
        await pub.job("tail").step("s").worker("w1").info("live 1")
        await pub.job("tail").end("completed")
    stored = read_job(redis.Redis.from_url(redis_server.url), "tail")
    got_tail = parse(await asyncio.wait_for(tail.read(), 5)).events
    assert [e.json()["msg"] for e in got_tail] == [
        "entry 17",
        "entry 18",
        "entry 19",
        "live 1",
        stored[-1]["msg"],
    ]
    got_new = parse(await asyncio.wait_for(new.read(), 5)).events
    assert [e.id for e in got_new] == [e["id"] for e in stored[-2:]]
    got_step = parse(await asyncio.wait_for(tail_step.read(), 5)).events
    assert [e.json()["msg"] for e in got_step] == ["entry 16", "entry 19", "live 1", stored[-1]["msg"]]


async def test_end_closes_and_a_reconnect_gets_204(
    make_gateway: MakeGateway, redis_server: RedisServer
) -> None:
    publish_entries(redis_server.url, "ended", 5)
    client = await make_gateway()
    parsed = parse(await read_all(client, "/v1/jobs/ended/stream"))
    assert parsed.events[-1].event == "end" and parsed.events[-1].json()["status"] == "completed"
    again = await client.get("/v1/jobs/ended/stream", headers={"Last-Event-ID": parsed.events[-1].id})
    assert again.status == 204
    later = await client.get(f"/v1/jobs/ended/stream?after={parsed.events[-1].id}")
    assert later.status == 204


async def test_gap_event_after_trimming(make_gateway: MakeGateway, redis_server: RedisServer) -> None:
    publish_entries(redis_server.url, "trim", 100)
    r = redis.Redis.from_url(redis_server.url)
    stored = read_job(r, "trim")
    r.xtrim(GatewaySettings().keyspace.stream("trim"), maxlen=30, approximate=False)
    client = await make_gateway()
    resumed = parse(await read_all(client, "/v1/jobs/trim/stream", {"Last-Event-ID": stored[10]["id"]}))
    gap = resumed.events[0]
    assert gap.event == "gap"
    assert gap.json() == {
        "after": stored[10]["id"],
        "first_available": stored[-30]["id"],
        "reason": "trimmed",
    }
    assert [e.id for e in resumed.events[1:]] == [e["id"] for e in stored[-30:]]
    fresh = parse(await read_all(client, "/v1/jobs/trim/stream")).events
    assert fresh[0].event == "gap" and fresh[0].json()["after"] == "0-0"
    assert [e.id for e in fresh[1:]] == [e["id"] for e in stored[-30:]]
    missed_one = parse(
        await read_all(client, "/v1/jobs/trim/stream", {"Last-Event-ID": stored[-32]["id"]})
    ).events
    assert missed_one[0].event == "gap", "one entry after the cursor was trimmed: the client is told"
    adjacent = parse(
        await read_all(client, "/v1/jobs/trim/stream", {"Last-Event-ID": stored[-31]["id"]})
    ).events
    assert [e.id for e in adjacent] == [e["id"] for e in stored[-30:]], "nothing missed: no gap"
    untouched = parse(
        await read_all(client, "/v1/jobs/trim/stream", {"Last-Event-ID": stored[-30]["id"]})
    ).events
    assert [e.id for e in untouched] == [e["id"] for e in stored[-29:]]


async def test_a_job_that_does_not_exist_yet_is_waited_for(
    make_gateway: MakeGateway, redis_server: RedisServer
) -> None:
    client = await make_gateway(heartbeat_s=0.1)
    resp = await client.get("/v1/jobs/later/stream")
    assert resp.status == 200
    buf = await asyncio.wait_for(resp.content.readuntil(b": heartbeat\n\n"), 5)
    await asyncio.wait_for(resp.content.readuntil(b": heartbeat\n\n"), 5)
    await asyncio.to_thread(publish_entries, redis_server.url, "later", 10)
    buf += await asyncio.wait_for(resp.read(), 5)
    events = parse(buf).events
    assert [e.json()["msg"] for e in events[:-1]] == [f"entry {i}" for i in range(10)]
    assert events[-1].event == "end"


async def test_slow_client_behind_the_ring_pages_from_redis(
    make_gateway: MakeGateway, redis_server: RedisServer
) -> None:
    client = await make_gateway(ring_entries=50, page_entries=40)
    resp = await client.get("/v1/jobs/slow/stream")
    first = await asyncio.wait_for(resp.content.readuntil(b"retry: 2000\n\n"), 5)
    await asyncio.to_thread(publish_entries, redis_server.url, "slow", 3000)  # the ring only keeps 50
    buf = first + await asyncio.wait_for(resp.read(), 30)
    ids = [e.id for e in parse(buf).events]
    stored = [e["id"] for e in read_job(redis.Redis.from_url(redis_server.url), "slow")]
    assert ids == stored
    gw = client.app[GATEWAY]
    assert gw.metrics.pages._value.get() > 0
    assert gw.metrics.dropped._value.get() == 0


@pytest.mark.parametrize(
    ("path", "headers", "status", "code"),
    [
        ("/v1/jobs/bad%20job/stream", {}, 400, "invalid_job"),
        ("/v1/jobs/" + "x" * 129 + "/stream", {}, 400, "invalid_job"),
        ("/v1/jobs/j/stream?after=abc", {}, 400, "invalid_id"),
        ("/v1/jobs/j/stream?after=1-2-3", {}, 400, "invalid_id"),
        ("/v1/jobs/j/stream?after=99999999999999999999999", {}, 400, "invalid_id"),
        ("/v1/jobs/j/stream", {"Last-Event-ID": "nope"}, 400, "invalid_id"),
        ("/v1/jobs/j/stream?tail=-1", {}, 400, "invalid_parameter"),
        ("/v1/jobs/j/stream?tail=abc", {}, 400, "invalid_parameter"),
        ("/v1/jobs/j/stream?tail=999999", {}, 400, "invalid_parameter"),
        ("/v1/jobs/j/stream?level=loud", {}, 400, "invalid_level"),
        ("/v1/jobs/j/stream?kind=log,nope", {}, 400, "invalid_kind"),
        ("/v1/jobs/j/stream?step=a%0Ab", {}, 400, "invalid_parameter"),
        ("/v1/jobs/j/stream?worker=", {}, 400, "invalid_parameter"),
    ],
)
async def test_bad_stream_requests(
    path: str, headers: dict[str, str], status: int, code: str, make_gateway: MakeGateway
) -> None:
    client = await make_gateway()
    resp = await client.get(path, headers=headers)
    assert resp.status == status
    assert (await resp.json())["error"]["code"] == code
    assert (await client.get("/healthz")).status == 200


async def test_a_password_protected_server_serves_publishers_live_streams_and_replay(
    redis_server_factory: ServerFactory, aiohttp_client: AiohttpClient
) -> None:
    """Every connection authenticates first (Valkey 9 answers NOAUTH before it even looks a
    command up): the publisher's, the shared pool's, a partition reader's and the control
    connection that wakes it (``CLIENT UNBLOCK``)."""
    server = redis_server_factory(appendonly=False)
    with redis.Redis(port=server.port) as admin:
        admin.config_set("requirepass", "s3cret")
    url = f"redis://:s3cret@127.0.0.1:{server.port}/0"
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=server.port).ping()
    client = await aiohttp_client(create_app(GatewaySettings(redis_url=url, heartbeat_s=0.2)))
    stream = await client.get("/v1/jobs/locked/stream")  # before the job exists: a live read
    async with Publisher(url) as pub:
        job = pub.job("locked", name="Locked")
        for i in range(20):
            await job.step("s").worker("w").info(f"line {i}", i=i)
            await pub.flush()
        await job.end("completed")
    body = await asyncio.wait_for(stream.read(), 20)
    stored = read_job(redis.Redis.from_url(url), "locked")
    assert [e.id for e in parse(body).events] == [e["id"] for e in stored] and len(stored) == 21
    page = await (await client.get("/v1/jobs/locked/logs")).json()
    assert [e["id"] for e in page["entries"]] == [e["id"] for e in stored]
