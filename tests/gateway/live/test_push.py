"""How the gateway writes to clients.

Pushes: the feed writes a small append straight to every parked subscriber (caught up, unfiltered,
transport empty) from bytes built once. Checked: the exact bytes in both HTTP framings, that
pushes really happen for live clients, that anything else (large appends, an end in the middle,
filtered or busy subscribers) takes the normal path, and that nothing is lost or repeated either
way. Stalls: a client whose kernel send queue is backed up gets small writes, so one that stops
reading leaves little unsent in the gateway."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis

from broker import Publisher
from broker.keys import Keyspace
from gateway.api.state import GATEWAY
from gateway.cli.redis_server import RedisServer
from gateway.ids import ZERO, from_redis
from gateway.live.budget import PageBudget
from gateway.live.frames import Batch
from gateway.live.items import FRAME, SID, make_item
from gateway.live.ring import Ring
from gateway.live.sse_response import http_chunk, kernel_queued
from tests.support.fixture_types import MakeGateway
from tests.support.helpers import read_job, stuck_client, wait_for_subscribers
from tests.support.jobs import Line, publish_job
from tests.support.sse_client import dechunk, parse

pytestmark = pytest.mark.server_matrix  # once per server (tests/conftest.py)


@dataclass(eq=False)
class FakeListener:
    parked: bool
    pushed: list[Batch] = field(default_factory=list)
    woken: int = 0

    def wake(self) -> None:
        self.woken += 1

    def push(self, batch: Batch) -> None:
        self.pushed.append(batch)


def raw_entries(url: str, job: str, messages: list[str], end: bool = False) -> list[Any]:
    publish_job(url, job, [Line(msg, "s", "w") for msg in messages], end="completed" if end else None)
    return redis.Redis.from_url(url).xrange(Keyspace().stream(job))


def new_feed(push_max_bytes: int = 32 * 1024) -> Ring:
    return Ring(
        "j", Keyspace().stream("j"), ZERO, 10_000, 1 << 20, push_max_bytes, page=PageBudget(1 << 20, 500)
    )


def test_parked_listeners_get_one_shared_batch_others_are_woken(redis_server: RedisServer) -> None:
    raw = raw_entries(redis_server.url, "j", [f"m{i}" for i in range(5)])
    feed = new_feed()
    parked, parked2, busy = FakeListener(True), FakeListener(True), FakeListener(False)
    for listener in (parked, parked2, busy):
        feed.listen(listener)
    assert feed.append(raw[:2]) == 2 and feed.append(raw[2:]) == 3
    assert busy.pushed == [] and busy.woken == 2
    assert parked.woken == 0 and len(parked.pushed) == 2
    assert parked.pushed[0] is parked2.pushed[0], "built once, shared by every parked client"
    first, second = parked.pushed
    items = [make_item("j", i, f) for i, f in raw]
    assert (first.after, first.cursor) == (ZERO, items[1][SID])
    assert (second.after, second.cursor) == (items[1][SID], items[4][SID])
    assert second.blob == b"".join(i[FRAME] for i in items[2:])
    assert http_chunk(second.blob) == b"%x\r\n" % len(second.blob) + second.blob + b"\r\n"
    assert (second.events, second.ended) == (3, False)


def test_large_appends_and_an_end_inside_a_batch_are_not_pushed(redis_server: RedisServer) -> None:
    raw = raw_entries(redis_server.url, "j", ["x" * 300] * 4, end=True)
    size = sum(len(make_item("j", i, f)[FRAME]) for i, f in raw[:4])
    listener = FakeListener(True)
    small = new_feed(push_max_bytes=size - 1)
    small.listen(listener)
    small.append(raw[:4])
    assert listener.pushed == [] and listener.woken == 1, "too big: each subscriber writes in chunks"
    feed = new_feed()
    feed.listen(listener)
    feed.append(raw[:4])
    feed.append(raw[4:] + raw[:1])  # an id already in the feed is skipped, so the end is last
    assert [b.ended for b in listener.pushed] == [False, True]


def test_a_batch_with_an_end_not_last_wakes_instead(redis_server: RedisServer) -> None:
    ended = raw_entries(redis_server.url, "j", ["a", "b"], end=True)
    # the write script stores nothing after an end: a foreign writer's entry, as a stream could hold
    more = ended + raw_entries(redis_server.url, "j-foreign", ["after the end"])
    listener = FakeListener(True)
    feed = new_feed()
    feed.listen(listener)
    feed.append(more)  # a, b, end, "after the end" in one read
    assert listener.pushed == [] and listener.woken == 1


async def read_http(port: int, path: str, version: str, until: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/{version}\r\nHost: t\r\n\r\n".encode())
    data = b""
    try:
        while until not in data:
            chunk = await asyncio.wait_for(reader.read(65536), 20)
            if not chunk:
                break
            data += chunk
        if version == "1.1":  # the terminating chunk follows the end event
            while not data.endswith(b"0\r\n\r\n"):
                chunk = await asyncio.wait_for(reader.read(65536), 20)
                if not chunk:
                    break
                data += chunk
    finally:
        writer.close()
    return data


async def test_live_clients_get_pushes_exact_bytes_in_both_framings(
    make_gateway: MakeGateway, redis_server: RedisServer
) -> None:
    client = await make_gateway(heartbeat_s=30)
    gw = client.app[GATEWAY]
    readers = [
        asyncio.create_task(read_http(client.port, "/v1/jobs/live/stream", v, b"event: end"))
        for v in ("1.1", "1.1", "1.0")
    ]
    await wait_for_subscribers(gw, 3, parked=True)  # idle, caught-up clients park
    async with Publisher(redis_server.url) as pub:
        step = pub.job("live").step("s")
        for i in range(60):
            await step.worker(f"w{i % 3}").info(f"live {i}\r\nwith data: inside", i=i)
            if i % 5 == 4:
                await pub.flush()  # small appends, one read each
                await asyncio.sleep(0.01)
        pushes = [s.pushes for s in gw.hub.subscribers]
        await pub.job("live").end("completed")
    chunked1, chunked2, plain = await asyncio.gather(*readers)
    assert min(pushes) > 0, "live entries went out as pushes"
    stored = read_job(redis.Redis.from_url(redis_server.url), "live")
    for raw in (chunked1, chunked2, plain):
        head, _, body = raw.partition(b"\r\n\r\n")
        if b"Transfer-Encoding: chunked" in head:
            body = dechunk(body)
        else:
            assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200")
        events = parse(body).events
        assert [e.id for e in events] == [e["id"] for e in stored], "every entry once, in order"
        assert [e.json() for e in events] == stored
    assert b"Transfer-Encoding: chunked" not in plain.partition(b"\r\n\r\n")[0]


async def test_filtered_and_unfiltered_clients_both_get_everything(
    make_gateway: MakeGateway, redis_server: RedisServer
) -> None:
    client = await make_gateway()
    gw = client.app[GATEWAY]
    everything = await client.get("/v1/jobs/mixed/stream")
    warnings = await client.get("/v1/jobs/mixed/stream?level=warning")
    await wait_for_subscribers(gw, 2)
    async with Publisher(redis_server.url) as pub:
        worker = pub.job("mixed").step("s").worker("w")
        for i in range(100):
            await (worker.warning if i % 4 == 0 else worker.info)(f"m{i}")
            if i % 10 == 9:
                await pub.flush()
                await asyncio.sleep(0.005)
        await pub.job("mixed").end("completed")
    all_events = parse(await asyncio.wait_for(everything.read(), 20)).events
    warn_events = parse(await asyncio.wait_for(warnings.read(), 20)).events
    stored = read_job(redis.Redis.from_url(redis_server.url), "mixed")
    assert [e.id for e in all_events] == [e["id"] for e in stored]
    assert [e.json()["msg"] for e in warn_events if e.event == "message"] == [
        f"m{i}" for i in range(0, 100, 4)
    ]
    assert warn_events[-1].event == "end" and from_redis(warn_events[-1].id) == from_redis(stored[-1]["id"])


async def test_heartbeats_only_when_nothing_else_went_out(
    make_gateway: MakeGateway, redis_server: RedisServer
) -> None:
    client = await make_gateway(heartbeat_s=0.3)
    gw = client.app[GATEWAY]
    resp = await client.get("/v1/jobs/beat/stream")
    await wait_for_subscribers(gw, 1, parked=True)
    async with Publisher(redis_server.url) as pub:
        worker = pub.job("beat").step("s").worker("w")
        for i in range(30):  # an entry every 50 ms for 1.5 s: pushes keep the stream busy
            await worker.info(f"m{i}")
            await pub.flush()
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.8)  # then idle: heartbeats again
        await pub.job("beat").end("completed")
    body = await asyncio.wait_for(resp.read(), 20)
    before_idle = body[: body.index(b"m29")]
    assert b": heartbeat" not in before_idle[body.index(b"m2") :], "no heartbeat while pushes flow"
    assert b": heartbeat" in body[body.index(b"m29") :], "heartbeats resume when idle"


def test_kernel_queued_reports_what_the_peer_has_not_read() -> None:
    class Fake:
        def __init__(self, sock: socket.socket | None) -> None:
            self.sock = sock

        def get_extra_info(self, name: str) -> Any:
            return self.sock if name == "socket" else None

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    tcp_server = socket.create_server(("127.0.0.1", 0))
    sender = socket.create_connection(tcp_server.getsockname())
    receiver, _ = tcp_server.accept()
    try:
        sender.sendall(b"x" * 50_000)
        assert 0 < kernel_queued(Fake(sender)) <= 50_000  # type: ignore[arg-type]
        receiver.recv(1 << 20)
        assert kernel_queued(Fake(None)) == 0  # type: ignore[arg-type]
        assert kernel_queued(None) == 0
        sender.close()
        assert kernel_queued(Fake(sender)) == 0, "a closed socket is not an error"  # type: ignore[arg-type]
    finally:
        for s in (a, b, tcp_server, receiver, sender):
            s.close()


async def test_a_client_that_stops_reading_leaves_one_small_write_unsent(
    make_gateway: MakeGateway, redis_server: RedisServer
) -> None:
    client = await make_gateway(write_timeout_s=60, write_buffer_bytes=4096)
    gw = client.app[GATEWAY]
    with stuck_client(client.port, "stall"):
        healthy = await client.get("/v1/jobs/stall/stream")
        await wait_for_subscribers(gw, 2)
        async with Publisher(redis_server.url) as pub:
            step = pub.job("stall").step("s")
            for i in range(3000):  # ~6 MB: more than the kernel buffers of the stalled socket
                await step.info(f"{i} " + "y" * 2000)
            await pub.job("stall").end("completed")
        assert len(parse(await asyncio.wait_for(healthy.read(), 60)).events) == 3001
        await asyncio.sleep(0.5)
        [stalled] = list(gw.hub.subscribers)
        assert stalled.writing_since is not None, "it waits in a write for the client"
        feed = gw.hub.rings["stall"]
        frame = max(len(i[FRAME]) for i in feed.after(feed.base) or [])
        # a write stops after the frame that reaches the limit: at most one frame over it, plus framing
        assert 0 < stalled.unsent() <= 4096 + frame + 16, "one small write waits, not a chunk"


def test_clients_at_one_cursor_share_one_write_until_the_next_append(redis_server: RedisServer) -> None:
    raw = raw_entries(redis_server.url, "j", [f"m{i}" for i in range(6)])
    feed = new_feed()
    feed.append(raw[:4])
    first = feed.frames_after(ZERO, 1 << 20)
    assert first is not None and feed.frames_after(ZERO, 1 << 20) is first, "built once, reused"
    items = [make_item("j", i, f) for i, f in raw]
    assert first.blob == b"".join(i[FRAME] for i in items[:4]) and first.events == 4
    assert http_chunk(first.blob) == b"%x\r\n" % len(first.blob) + first.blob + b"\r\n"
    small = feed.frames_after(ZERO, len(items[0][FRAME]))
    assert small is not None and small.cursor == items[0][SID], "another size is another write"
    feed.append(raw[4:])
    after = feed.frames_after(ZERO, 1 << 20)
    assert after is not first and after is not None and after.events == 6, "an append makes it stale"
    assert feed.frames_after(items[5][SID], 1 << 20) is not None
    assert feed.frames_after(items[5][SID], 1 << 20).blob == b""  # type: ignore[union-attr]


async def test_a_reader_lingers_after_a_caught_up_read(
    make_gateway: MakeGateway, redis_server: RedisServer
) -> None:
    """Entries that arrive while a partition reader lingers come in one append, not one each."""
    client = await make_gateway(read_linger_ms=400)
    gw = client.app[GATEWAY]
    resp = await client.get("/v1/jobs/linger/stream")
    await wait_for_subscribers(gw, 1)
    feed = gw.hub.rings["linger"]
    appends: list[tuple[float, int]] = []
    first_read = asyncio.Event()
    append = feed.append

    def recording(raw: Any) -> int:
        appends.append((asyncio.get_running_loop().time(), len(raw)))
        first_read.set()
        return append(raw)

    feed.append = recording  # type: ignore[method-assign]
    async with Publisher(redis_server.url) as pub:
        worker = pub.job("linger").step("s").worker("w")
        await worker.info("first")
        await pub.flush()
        await asyncio.wait_for(first_read.wait(), 10)
        for i in range(3):  # three separate writes within the linger
            await worker.info(f"m{i}")
            await pub.flush()
            await asyncio.sleep(0.03)
        await pub.job("linger").end("completed")
    events = parse(await asyncio.wait_for(resp.read(), 20)).events
    assert [e.json()["msg"] for e in events[:4]] == ["first", "m0", "m1", "m2"]
    assert appends[1][1] >= 3, f"the lingering reader took the three together: {appends}"
    assert appends[1][0] - appends[0][0] >= 0.39, "and not before the linger was over"
