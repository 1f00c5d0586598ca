"""What outside testing broke, route by route (each test failed on the code before its fix)."""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import time
import tracemalloc
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from aiohttp import ClientSession, TCPConnector, web

from broker import SyncPublisher
from broker.keys import Keyspace
from gateway.api import create_app
from gateway.api.state import GATEWAY
from gateway.cli.redis_server import RedisServer
from gateway.ids import StreamId, from_redis
from gateway.live.items import FRAME, Item
from gateway.live.pages import Pages
from gateway.settings import GatewaySettings
from gateway.storage import MAX_SCAN_PAGES
from tests.gateway.api.test_bad_input import gzip_bomb
from tests.support.fixture_types import Client, MakeGateway, ServerFactory
from tests.support.gateway_process import GatewayProcess
from tests.support.helpers import error_of, read_job, stuck_client, wait_for_subscribers
from tests.support.jobs import Line, publish_entries, publish_job
from tests.support.sse_client import parse


async def test_head_on_a_stream_is_refused_without_a_body_and_not_counted(api: Client) -> None:
    """A HEAD used to be served as the stream itself: headers, then a body that never ended."""
    resp = await asyncio.wait_for(api.head("/v1/jobs/h/stream"), 5)
    assert resp.status == 405
    assert "GET" in resp.headers["Allow"] and "HEAD" not in resp.headers["Allow"]
    assert await resp.read() == b""
    readyz = await (await api.get("/readyz")).json()
    assert readyz["clients"] == 0


async def test_job_ids_with_braces_are_named_as_invalid_not_unknown_routes(api: Client) -> None:
    for path in ("/v1/jobs/a%7Bb%7D", "/v1/jobs/%7B%7D/logs", "/v1/jobs/x%7D/stream"):
        error = await error_of(await api.get(path), 400)
        assert error["code"] == "invalid_job", path


async def test_a_message_with_unicode_line_separators_cannot_forge_an_event(api: Client) -> None:
    """A client that splits lines like ``str.splitlines`` (httpx ``iter_lines``) saw U+2028,
    U+2029 and U+0085 end a ``data:`` line: a message could forge an ``end`` event."""
    forged = "x\u2028\u2028event: end\u2029data: {}\u0085\u0085"
    resp = await api.post(
        "/v1/jobs/sep/logs", json=[{"msg": forged}, {"msg": "after", "kind": "end", "status": "ok"}]
    )
    assert resp.status == 200, await resp.text()
    stream = await api.get("/v1/jobs/sep/stream")
    body = (await stream.read()).decode()
    assert not any(ch in body for ch in "\u2028\u2029\u0085"), "sent escaped, never raw"
    events: list[tuple[str, str]] = []
    name, data = "message", ""
    for line in body.splitlines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
        elif not line and data:
            events.append((name, data))
            name, data = "message", ""
    assert [n for n, _ in events] == ["message", "end"]
    assert json.loads(events[0][1])["msg"] == forged
    replay = await (await api.get("/v1/jobs/sep/logs")).json()
    assert replay["entries"][0]["msg"] == forged


def _open_streams(port: int, job: str, n: int) -> list[socket.socket]:
    """``n`` raw SSE clients, each past its response headers."""
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(f"GET /v1/jobs/{job}/stream HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        socks.append(s)
    for s in socks:
        s.settimeout(5)
        assert s.recv(4096).startswith(b"HTTP/1.1 200"), "a slot was free"
    return socks


async def test_a_client_that_hangs_up_frees_its_slot_without_waiting_for_a_write(
    redis_server: RedisServer,
) -> None:
    """An idle stream only noticed its client had gone at its next write, a heartbeat (15 s) later:
    a client reconnecting in a loop filled max_clients and everyone else got 503. Here the app
    runs as an embedding application would run it, without aiohttp's handler cancellation."""
    app = create_app(GatewaySettings(redis_url=redis_server.url, max_clients=10, heartbeat_s=15))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        gw = app[GATEWAY]
        for _ in range(3):  # connect and drop, three times over: more than the limit in all
            for s in await asyncio.to_thread(_open_streams, port, "drop", 10):
                s.close()
            await wait_for_subscribers(gw, 0, timeout_s=2.5)
        assert gw.metrics.registry.get_sample_value("logbroker_sse_clients") == 0, "the gauge reads the hub"
        async with ClientSession() as http, http.get(f"http://127.0.0.1:{port}/v1/jobs/drop/stream") as resp:
            assert resp.status == 200 and gw.hub.clients == 1
            assert gw.metrics.registry.get_sample_value("logbroker_sse_clients") == 1
    finally:
        await runner.cleanup()


def test_serve_frees_a_hung_up_clients_slot_at_once(tmp_path: Path, redis_server: RedisServer) -> None:
    """``logbroker serve`` ends the handler when its connection is lost (aiohttp's handler
    cancellation), and the hub's once-a-second check catches any it missed."""
    gateway = GatewayProcess(redis_server.url, tmp_path / "gw.log", max_clients=10, heartbeat_s=15).start()
    try:
        for _ in range(3):
            for s in _open_streams(gateway.port, "drop", 10):
                s.close()
            deadline = time.monotonic() + 1.5
            while httpx.get(f"{gateway.url}/readyz").json()["clients"] and time.monotonic() < deadline:
                time.sleep(0.01)
            assert httpx.get(f"{gateway.url}/readyz").json()["clients"] == 0, "freed within 1.5 s"
        with httpx.stream("GET", f"{gateway.url}/v1/jobs/drop/stream", timeout=5) as resp:
            assert resp.status_code == 200
    finally:
        gateway.stop()


async def test_more_concurrent_requests_than_redis_connections_wait_instead_of_failing(
    make_gateway: MakeGateway, redis_server: RedisServer
) -> None:
    """redis-py's default pool refused the 101st concurrent command: 200 of 300 concurrent meta
    requests (and ingests) got 503 redis_unavailable from a healthy Redis."""
    publish_entries(redis_server.url, "busy", 3)
    client = await make_gateway()
    base = str(client.make_url(""))
    async with ClientSession(connector=TCPConnector(limit=0)) as http:  # 600 at once, not 100
        gets = [http.get(f"{base}/v1/jobs/busy") for _ in range(300)]
        posts = [http.post(f"{base}/v1/jobs/busy-{i}/logs", json=[{"msg": "m"}]) for i in range(300)]
        statuses = [r.status for r in await asyncio.gather(*gets, *posts)]
    assert statuses == [200] * 600


async def test_a_small_pool_makes_requests_wait_their_turn(
    make_gateway: MakeGateway, redis_server: RedisServer
) -> None:
    publish_entries(redis_server.url, "few", 3, end=False)
    client = await make_gateway(redis_max_connections=2)
    gets = [client.get("/v1/jobs/few") for _ in range(50)]
    posts = [client.post("/v1/jobs/few/logs", json=[{"msg": "m"}]) for _ in range(50)]
    assert [r.status for r in await asyncio.gather(*gets, *posts)] == [200] * 100
    info = redis.Redis.from_url(redis_server.url).info("clients")
    assert info["connected_clients"] <= 2 + 2 + 3, "two pools of 2, a reader and its control, us"


async def test_the_first_read_after_a_redis_restart_is_answered(
    make_gateway: MakeGateway, redis_server_factory: ServerFactory, tmp_path: Path
) -> None:
    """Every pooled connection is dead after a restart: its first use answered 503 ([503, 200, 200])."""
    server = redis_server_factory(appendonly=True)
    publish_entries(server.url, "r", 3)
    client = await make_gateway(redis_url=server.url)
    assert [r.status for r in await asyncio.gather(*[client.get("/v1/jobs/r") for _ in range(5)])] == [
        200
    ] * 5
    server.stop()
    server.start()
    assert [(await client.get("/v1/jobs/r")).status for _ in range(3)] == [200, 200, 200]


def _command_calls(url: str, command: str) -> int:
    stats = redis.Redis.from_url(url).info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_a_sparse_tail_start_reads_a_bounded_part_of_the_stream_then_goes_live(
    make_gateway: MakeGateway, redis_server: RedisServer
) -> None:
    """``tail=1&step=nope`` read the whole stream backwards looking for a match (2 s of gateway
    CPU per request on a 500k-entry job, unbounded)."""
    publish_entries(redis_server.url, "sparse", 30_000, end=False)
    client = await make_gateway(page_entries=200)
    before = _command_calls(redis_server.url, "xrevrange")
    resp = await client.get("/v1/jobs/sparse/stream?tail=1&step=nope")
    assert resp.status == 200
    retry = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5)
    head = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5)  # the id-only cursor move
    assert retry.startswith(b"retry: ")
    pages = _command_calls(redis_server.url, "xrevrange") - before
    # 21 pages' worth of entries at most (20 beyond what tail=1 needs) in reads sized by the page
    # budget (a first one of FIRST_COUNT entries, their size unknown, then 200 each), and the
    # hub's last_id for the job's new ring
    assert pages <= MAX_SCAN_PAGES + 3, f"{pages} pages of 200 read for one tail=1 start"
    assert b"id: " in head
    await client.post("/v1/jobs/sparse/logs", json=[{"msg": "found", "step": "nope"}])
    line = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5)
    assert b'"msg":"found"' in line, "live after the bounded look back"
    resp.close()


async def test_tail_starts_are_not_held_for_the_life_of_the_stream(
    make_gateway: MakeGateway, redis_server: RedisServer
) -> None:
    """Each caught-up client of ``tail=5000`` kept its whole initial batch (6.3 MiB each on a
    20k-entry job), against 16 KiB for ``after=$``: memory per client is one page at most."""
    publish_job(
        redis_server.url, "big", (Line(f"{i} " + "x" * 1000, "s", "w") for i in range(3000)), end=None
    )
    client = await make_gateway()
    tracemalloc.start()
    try:
        gc.collect()
        base = tracemalloc.get_traced_memory()[0]
        streams = [await client.get("/v1/jobs/big/stream?tail=3000") for _ in range(8)]
        for resp in streams:
            seen = 0
            while seen < 3000:
                seen += (await asyncio.wait_for(resp.content.readany(), 5)).count(b"\ndata: ")
        await wait_for_subscribers(client.app[GATEWAY], 8, parked=True)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    for resp in streams:
        resp.close()
    per_start = 3000 * 1100
    assert held < 2 * per_start, f"{held / 2**20:.1f} MiB held by 8 caught-up tail=3000 clients"


def _lag_samples(client: Client) -> tuple[float, float]:
    registry = client.app[GATEWAY].metrics.registry
    count = registry.get_sample_value("logbroker_sse_client_lag_seconds_count") or 0.0
    total = registry.get_sample_value("logbroker_sse_client_lag_seconds_sum") or 0.0
    return count, total


async def test_client_lag_is_sampled_only_for_live_clients(
    make_gateway: MakeGateway, redis_server: RedisServer
) -> None:
    """The lag histogram summed 3.59e9 s over 320 samples: a client with no entry yet has cursor
    (0, 0) and its heartbeats sampled time.time() - 0; replays of old jobs counted as lag too."""
    publish_entries(redis_server.url, "history", 300)
    client = await make_gateway(heartbeat_s=0.05)
    waiting = await client.get("/v1/jobs/not-yet/stream")
    await asyncio.sleep(0.3)  # heartbeats only
    replay = await client.get("/v1/jobs/history/stream")
    await asyncio.wait_for(replay.read(), 5)  # the whole ended job, read from history
    waiting.close()
    await wait_for_subscribers(client.app[GATEWAY], 0)
    assert _lag_samples(client) == (0.0, 0.0)
    live = await client.get("/v1/jobs/now/stream")
    await wait_for_subscribers(client.app[GATEWAY], 1, parked=True)
    await client.post("/v1/jobs/now/logs", json=[{"msg": "m"}, {"msg": "e", "kind": "end", "status": "ok"}])
    await asyncio.wait_for(live.read(), 5)
    await wait_for_subscribers(client.app[GATEWAY], 0)
    count, total = _lag_samples(client)
    assert count >= 1 and total < 5, "a live client's writes are sampled, from the entry's time"


def _peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        line = next(row for row in status if row.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def test_a_gzip_bomb_is_refused_without_being_inflated(tmp_path: Path, redis_server: RedisServer) -> None:
    """0.5 MB of gzip inflating to 512 MiB was inflated (1.4 s of event-loop CPU, +170 MiB) before
    its 413; an unknown Content-Encoding was taken as no encoding."""
    bomb = gzip_bomb(512)
    gateway = GatewayProcess(redis_server.url, tmp_path / "gw.log").start()
    try:
        assert gateway.process is not None
        before = _peak_rss_mib(gateway.process.pid)
        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        resp = httpx.post(f"{gateway.url}/v1/jobs/bomb/logs", content=bomb, headers=headers, timeout=30)
        grown = _peak_rss_mib(gateway.process.pid) - before
        assert resp.status_code == 413 and resp.json()["error"]["code"] == "body_too_large"
        assert grown < 48, f"peak RSS grew {grown:.0f} MiB for a 16 MiB body limit"
        evil = httpx.post(f"{gateway.url}/v1/jobs/bomb/logs", content=b'[{"msg": "m"}]',
                          headers={**headers, "Content-Encoding": "evil"})  # fmt: skip
        assert evil.status_code == 415
        assert httpx.get(f"{gateway.url}/healthz", timeout=1).status_code == 200
    finally:
        gateway.stop()


async def test_nothing_is_stored_after_a_jobs_end(
    make_gateway: MakeGateway, redis_server: RedisServer
) -> None:
    """Entries after ``end`` were accepted and never reached live clients (their streams had
    stopped at the first end, a reconnect got 204); a second end flipped completed to failed."""
    client = await make_gateway()
    ended = await client.post(
        "/v1/jobs/fin/logs", json=[{"msg": "m"}, {"msg": "e", "kind": "end", "status": "completed"}]
    )
    assert ended.status == 200
    late = await error_of(await client.post("/v1/jobs/fin/logs", json=[{"msg": "late"}]), 409)
    assert late["code"] == "job_ended" and "1 entries after its end were refused" in late["message"]
    again = await error_of(
        await client.post("/v1/jobs/fin/logs", json=[{"msg": "x", "kind": "end", "status": "failed"}]), 409
    )
    assert again["code"] == "job_ended"
    mixed = await error_of(
        await client.post(
            "/v1/jobs/fin2/logs", json=[{"msg": "e", "kind": "end", "status": "ok"}, {"msg": "after"}]
        ),
        409,
    )
    assert "1 entries of this request were stored" in mixed["message"]
    meta = await (await client.get("/v1/jobs/fin")).json()
    assert meta["status"] == "completed" and meta["entries"] == 2
    logs = await (await client.get("/v1/jobs/fin2/logs")).json()
    assert [e["kind"] for e in logs["entries"]] == ["end"]
    with SyncPublisher(redis_server.url) as pub:
        pub.job("fin").info("from a publisher")
        report = pub.flush()
    assert report.rejected == 1 and report.delivered == 0 and not report.ok


async def test_ingesting_lower_seqs_after_higher_ones_stores_them(api: Client) -> None:
    """Seqs 1001-2000 then 1-1000 of one src answered ``accepted 0, duplicates 1000`` and stored
    nothing: a seq that was never stored is not a duplicate."""

    def entries(seqs: range) -> list[dict[str, object]]:
        return [{"msg": f"item {s}", "src": "importer", "seq": s} for s in seqs]

    high = await api.post("/v1/jobs/low-seqs/logs", json=entries(range(1001, 2001)))
    low = await api.post("/v1/jobs/low-seqs/logs", json=entries(range(1, 1001)))
    assert (await high.json())["accepted"] == 1000
    assert {k: v for k, v in (await low.json()).items() if k != "ids"} == {"accepted": 1000, "duplicates": 0}
    again = await (await api.post("/v1/jobs/low-seqs/logs", json=entries(range(1, 2001)))).json()
    assert (again["accepted"], again["duplicates"]) == (0, 2000)
    meta = await (await api.get("/v1/jobs/low-seqs")).json()
    assert meta["entries"] == 2000 and meta["publishers"]["importer"] == {"entries": 2000, "last_seq": 2000}


async def test_a_seq_stored_with_other_content_is_a_409_naming_it(api: Client) -> None:
    """The same seq with other content was counted as a duplicate (and dropped). A retry of the
    same entries, whose time the gateway fills in, still is one."""
    first = [{"msg": f"a{s}", "src": "s", "seq": s} for s in (1, 2, 3)]
    assert (await api.post("/v1/jobs/reused/logs", json=first)).status == 200
    retry = await api.post("/v1/jobs/reused/logs", json=first)
    assert (await retry.json())["duplicates"] == 3
    mixed = [{"msg": m, "src": "s", "seq": seq} for m, seq in (("a2", 2), ("other", 3), ("a4", 4))]
    error = await error_of(await api.post("/v1/jobs/reused/logs", json=mixed), 409)
    assert error["code"] == "seq_conflict"
    assert "s#3" in error["message"] and "other content" in error["message"]
    assert "1 entries of this request were stored and 1 were duplicates" in error["message"]
    page = await (await api.get("/v1/jobs/reused/logs")).json()
    assert [e["msg"] for e in page["entries"]] == ["a1", "a2", "a3", "a4"]


async def test_a_lagging_clients_pages_are_bounded_in_bytes_and_lose_nothing(
    make_gateway: MakeGateway, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1,000 entries of 65 KB control characters (JSON-escaped to ~390 KB each) were read 500 at a
    time (XRANGE COUNT) for each client behind the ring, and every page decoded and held whole:
    a page now ends with the entry that reaches ``page_max_bytes``, and the next starts after it."""
    heavy = "\x01" * 16_000  # 96 KB of JSON each, 6.5 MB in all
    lines = (Line(f"{i} {heavy}" if i % 7 else f"{i} small", "s", f"w{i % 2}") for i in range(80))
    publish_job(redis_server.url, "heavy", lines)
    kept: list[tuple[int, int]] = []  # each page read from Redis: its bytes, its largest frame
    keep = Pages.keep

    def record(self: Pages, after: StreamId, items: list[Item]) -> None:
        kept.append((sum(len(i[FRAME]) for i in items), max(len(i[FRAME]) for i in items)))
        keep(self, after, items)

    monkeypatch.setattr(Pages, "keep", record)
    budget = 256 * 1024
    client = await make_gateway(page_max_bytes=budget)
    stored = read_job(redis.Redis.from_url(redis_server.url), "heavy")

    body = await asyncio.wait_for((await client.get("/v1/jobs/heavy/stream")).read(), 30)
    assert [e.json() for e in parse(body).events] == stored, "every entry once, in order"
    assert kept and all(size <= budget + frame for size, frame in kept), f"page bytes: {kept}"

    # filtered: id-only events move Last-Event-ID past what the filter left out, and a client
    # resumed at one of them gets the rest exactly
    wanted = [e for e in stored if e["worker"] == "w1" or e["kind"] == "end"]
    raw = await asyncio.wait_for((await client.get("/v1/jobs/heavy/stream?worker=w1")).read(), 30)
    filtered = parse(raw)
    assert [e.json() for e in filtered.events] == wanted
    ids = [from_redis(line[4:]) for line in raw.split(b"\n") if line.startswith(b"id: ")]
    assert ids == sorted(set(ids)) and len(ids) > len(wanted), "ascending, with id-only events"
    cut = next(e["id"] for e in stored[40:] if e["worker"] == "w0")
    resumed = await client.get("/v1/jobs/heavy/stream?worker=w1", headers={"Last-Event-ID": cut})
    rest = parse(await asyncio.wait_for(resumed.read(), 30))
    assert [e.json() for e in rest.events] == [e for e in wanted if from_redis(e["id"]) > from_redis(cut)]
    tail = await client.get("/v1/jobs/heavy/stream?tail=12&worker=w1")  # sent as pages too
    assert [e.json() for e in parse(await asyncio.wait_for(tail.read(), 30)).events] == wanted[-12:]
    assert all(size <= budget + frame for size, frame in kept), f"page bytes: {kept}"


async def _until_all_stuck(gw: Any, n: int, timeout_s: float = 30.0) -> None:
    """Until ``n`` subscribers are all waiting on a write their client does not take, for a while."""
    loop = asyncio.get_running_loop()
    deadline, since = loop.time() + timeout_s, None
    while loop.time() < deadline:
        subs = gw.hub.subscribers
        if len(subs) == n and all(s.writing_since is not None for s in subs):
            since = since or loop.time()
            if loop.time() - since > 0.5:
                return
        else:
            since = None
        await asyncio.sleep(0.05)
    raise AssertionError(f"{n} stalled subscribers expected")


async def test_stalled_clients_behind_the_ring_hold_a_page_of_bytes_each(
    make_gateway: MakeGateway, redis_server: RedisServer
) -> None:
    """4 stalled SSE clients behind the ring added 222 MiB over entries of 65 KB control
    characters: each read was 500 entries (XRANGE COUNT), decoded and kept whole; a ``tail=N``
    start decoded and held its N entries. Now what the gateway holds for them (their pages, the
    kept ones, their writes) is bounded in bytes."""
    heavy = "\x01" * 16_000  # 96 KB of JSON each: 200 of them are 19 MB of frames
    publish_job(redis_server.url, "stall", (Line(f"{i} {heavy}", "s", "w") for i in range(200)), end=None)
    ids = [i.decode() for i, _ in redis.Redis.from_url(redis_server.url).xrange(Keyspace().stream("stall"))]
    budget, ring_bytes, frame = 256 * 1024, 1 << 20, 96_100
    client = await make_gateway(page_max_bytes=budget, ring_bytes=ring_bytes, write_timeout_s=600)
    tracemalloc.start()
    try:
        gc.collect()
        base = tracemalloc.get_traced_memory()[0]
        with ExitStack() as stack:
            for k in range(4):  # each at its own place in the job's history
                stack.enter_context(stuck_client(client.port, "stall", last_event_id=ids[k * 45]))
            stack.enter_context(stuck_client(client.port, "stall", query="tail=150"))  # and a tail start
            await _until_all_stuck(client.app[GATEWAY], 5)
            gc.collect()
            held, peak = (m - base for m in tracemalloc.get_traced_memory())
    finally:
        tracemalloc.stop()
    # per client a page (budget + one entry) and a write in its transport; the kept pages
    bound = 5 * (budget + frame + 2 * frame) + ring_bytes // 2
    assert held < bound, f"{held / 2**20:.1f} MiB held for 5 stalled clients (bound {bound / 2**20:.1f})"
    assert peak < bound + 2 * budget, f"{peak / 2**20:.1f} MiB at the peak: a read far past the budget"
