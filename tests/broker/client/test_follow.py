"""``broker.client`` against real gateways and a real redis-server: exactly once and in order
through a kill -9 and restart, the end entry last, gaps, 204, refusals and the retry bound.

Gateways run in-process (``make_gateway``: a real HTTP server on a free port) where the test only
needs answers, and as processes (``GatewayProcess``) where one must die mid-stream."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import httpx
import pytest
import redis

from broker import Keyspace, PublisherConfig, SyncPublisher
from broker.client import (
    BadRequest,
    Forbidden,
    Gap,
    GapError,
    LogEntry,
    NotFound,
    RetriesExhausted,
    Retry,
    Unauthorized,
    follow,
    follow_sync,
    read,
    read_sync,
)
from gateway.cli.redis_server import RedisServer, free_port
from tests.support.fixture_types import Client, MakeGateway
from tests.support.gateway_process import GatewayProcess
from tests.support.helpers import read_job
from tests.support.jobs import Line, publish_job

FAST = Retry(initial_ms=20, max_ms=200, max_elapsed_s=30)


def base(client: Client) -> str:
    return str(client.make_url("")).rstrip("/")


def stored_ids(url: str, job: str) -> list[str]:
    return [e["id"] for e in read_job(redis.Redis.from_url(url), job)]


def publish(url: str, job: str, n: int, pace_s: float = 0.0, end: str | None = "completed") -> None:
    publish_job(url, job, (Line(f"line {i}", "s", f"w{i % 3}", fields={"i": i}) for i in range(n)),
                name="Client", end=end, pace_s=pace_s, pace_every=10)  # fmt: skip


def trimmed_job(url: str, job: str) -> str:
    """A job whose first entry was trimmed away by the stream cap; returns that entry's id."""
    config = PublisherConfig(stream_maxlen=200, max_batch_entries=50)
    with SyncPublisher(url, config=config) as pub:
        handle = pub.job(job)
        handle.info("the very first entry")
        assert pub.flush().ok
        first = redis.Redis.from_url(url).xrange(Keyspace().stream(job), count=1)[0][0].decode()
        for i in range(3000):
            handle.step("s").info(f"e{i}")
        handle.end("completed")
    return first


async def follow_all(url: str, job: str, got: list[LogEntry]) -> int:
    async with follow(url, job, retry=FAST) as entries:
        async for e in entries:
            assert isinstance(e, LogEntry)
            got.append(e)
        return entries.connections


def follow_all_sync(url: str, job: str, got: list[LogEntry]) -> int:
    with follow_sync(url, job, retry=FAST) as entries:
        for e in entries:
            assert isinstance(e, LogEntry)
            got.append(e)
        return entries.connections


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["async", "thread"])
async def test_exactly_once_in_order_across_a_kill_9_and_restart_of_the_gateway(
    redis_server: RedisServer, tmp_path: Path, mode: str
) -> None:
    gw = GatewayProcess(redis_server.url, tmp_path / "gw.log", retry_ms=50).start()
    got: list[LogEntry] = []
    try:
        publisher = threading.Thread(target=publish, args=(redis_server.url, "k9", 1500, 0.01))
        publisher.start()
        if mode == "async":
            follower = asyncio.ensure_future(follow_all(gw.url, "k9", got))
        else:  # follow_sync in a thread of its own, as a threaded program runs it
            follower = asyncio.ensure_future(asyncio.to_thread(follow_all_sync, gw.url, "k9", got))
        while len(got) < 300:
            assert not follower.done() and publisher.is_alive(), "the kill must come mid-stream"
            await asyncio.sleep(0.01)
        gw.kill()
        await asyncio.sleep(0.3)
        gw.start()
        connections = await asyncio.wait_for(follower, 60)
        await asyncio.to_thread(publisher.join)
    finally:
        gw.stop()
    assert [e.id for e in got] == stored_ids(redis_server.url, "k9"), "0 lost, 0 repeated, in order"
    assert connections >= 2
    assert got[-1].kind == "end" and got[-1].totals is not None and got[-1].totals["entries"] == 1500


async def test_the_end_entry_comes_last_with_its_totals_and_filters_resume_exactly(
    make_gateway: MakeGateway, redis_server: RedisServer
) -> None:
    publish(redis_server.url, "done", 30)
    url = base(await make_gateway())
    async with follow(url, "done", worker="w1") as entries:
        got = [e async for e in entries]
    assert isinstance(got[-1], LogEntry) and got[-1].kind == "end" and got[-1] == entries.end
    assert got[-1].totals is not None and got[-1].totals["workers"]["s"]["w1"] == 10
    assert [e.msg for e in got[:-1] if isinstance(e, LogEntry)] == [f"line {i}" for i in range(1, 30, 3)]
    assert entries.cursor == got[-1].id and not entries.past_end
    async with follow(url, "done", tail=2) as entries:
        assert [e.id async for e in entries] == stored_ids(redis_server.url, "done")[-2:]


async def test_204_ends_at_once_when_the_start_is_past_the_end(
    make_gateway: MakeGateway, redis_server: RedisServer
) -> None:
    publish(redis_server.url, "over", 3)
    url = base(await make_gateway())
    end_id = stored_ids(redis_server.url, "over")[-1]
    started = time.monotonic()
    async with follow(url, "over", after=end_id) as entries:
        assert [e async for e in entries] == []
    assert entries.past_end and entries.end is None and entries.connections == 0
    assert time.monotonic() - started < 2, "no reconnect loop"


async def test_a_job_that_does_not_exist_yet_is_waited_for_and_a_start_from_now_misses_nothing(
    make_gateway: MakeGateway, redis_server: RedisServer
) -> None:
    url = base(await make_gateway(heartbeat_s=0.2))
    publish(redis_server.url, "busy", 5, end=None)
    later: asyncio.Task[list[str]] = asyncio.ensure_future(_ids(follow(url, "later")))
    from_now: asyncio.Task[list[str]] = asyncio.ensure_future(_ids(follow(url, "busy", after="$")))
    await asyncio.sleep(0.5)
    assert not later.done() and not from_now.done()
    await asyncio.to_thread(publish, redis_server.url, "later", 4)
    with SyncPublisher(redis_server.url) as pub:
        pub.job("busy").info("new")
        pub.job("busy").end("completed")
    assert await asyncio.wait_for(later, 10) == stored_ids(redis_server.url, "later")
    assert await asyncio.wait_for(from_now, 10) == stored_ids(redis_server.url, "busy")[-2:]


async def _ids(entries: object) -> list[str]:
    async with entries as es:  # type: ignore[attr-defined]
        return [e.id async for e in es]


@pytest.mark.parametrize("mode", ["async", "sync"])
async def test_a_gap_is_raised_by_default_and_yielded_on_request(
    make_gateway: MakeGateway, redis_server: RedisServer, mode: str
) -> None:
    first = trimmed_job(redis_server.url, "old")
    url = base(await make_gateway())
    oldest = stored_ids(redis_server.url, "old")[0]
    if mode == "async":
        with pytest.raises(GapError) as raised:
            async with follow(url, "old", after=first) as entries:
                async for _ in entries:
                    pytest.fail("nothing comes before the gap")
        async with follow(url, "old", after=first, gaps="yield") as entries:
            got = [e async for e in entries]
    else:  # the gateway runs on this loop: the blocking client runs in a thread

        def sync_raise() -> GapError:
            with pytest.raises(GapError) as e, follow_sync(url, "old", after=first) as entries:
                list(entries)
            return e.value

        raised_value = await asyncio.to_thread(sync_raise)
        got = await asyncio.to_thread(lambda: list(follow_sync(url, "old", after=first, gaps="yield")))
    error = raised.value if mode == "async" else raised_value
    assert (error.after, error.first_available, error.reason) == (first, oldest, "trimmed")
    assert got[0] == Gap(first, oldest, "trimmed")
    assert [e.id for e in got[1:]] == stored_ids(redis_server.url, "old")


async def test_refusals_raise_clear_errors_with_the_servers_code(
    make_gateway: MakeGateway, redis_server: RedisServer
) -> None:
    from gateway.api.auth import mint_token

    secret = "s" * 40
    publish(redis_server.url, "mine", 2)
    url = base(await make_gateway(auth_secret=secret))
    other = mint_token(secret, jobs="other-*", scopes=["read"], ttl_s=60)
    cases = [
        (follow(url, "mine"), Unauthorized, 401, "unauthorized"),
        (follow(url, "mine", token="not-a-jwt"), Unauthorized, 401, "unauthorized"),
        (follow(url, "mine", token=other), Forbidden, 403, "forbidden"),
        (follow(url, "bad job id", token=other), BadRequest, 400, "invalid_job"),
        (follow(url, "mine", level="loud", token=mint_token(secret, jobs="*", scopes=["read"], ttl_s=60)),
         BadRequest, 400, "invalid_level"),
        (follow(f"{url}/not-a-gateway", "mine", token=other), NotFound, 404, "not_found"),
        (read(url, "nope", token=mint_token(secret, jobs="*", scopes=["read"], ttl_s=60)),
         NotFound, 404, "job_not_found"),
    ]  # fmt: skip
    for source, error, status, code in cases:
        started = time.monotonic()
        with pytest.raises(error) as e:
            async with source as entries:
                async for _ in entries:
                    pass
        assert (e.value.status, e.value.code) == (status, code), e.value
        assert time.monotonic() - started < 2, "a refusal is not retried"


async def test_the_retry_bound_is_reached_against_a_dead_port_with_a_clear_error() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    seen: list[float] = []
    started = time.monotonic()
    with pytest.raises(RetriesExhausted) as by_time:
        async with follow(dead, "j", retry=Retry(initial_ms=50, max_ms=200, max_elapsed_s=1.0)) as entries:
            async for _ in entries:
                pass
    took = time.monotonic() - started
    assert 1.0 <= took < 3.0, took
    assert f"gave up on {dead}/v1/jobs/j/stream" in str(by_time.value) and "ConnectError" in str(
        by_time.value
    )
    retry = Retry(initial_ms=10, max_attempts=3, max_elapsed_s=None)
    with pytest.raises(RetriesExhausted) as by_count:
        list(read_sync(dead, "j", retry=retry, on_retry=lambda e, delay: seen.append(delay)))
    assert by_count.value.attempts == 3 and len(seen) == 2, "told of each retry, not of the last failure"


async def test_read_pages_through_the_whole_job_both_ways_with_filters_and_limits(
    make_gateway: MakeGateway, redis_server: RedisServer
) -> None:
    publish(redis_server.url, "pages", 50)
    url = base(await make_gateway())
    ids = stored_ids(redis_server.url, "pages")
    async with read(url, "pages", page_size=7) as entries:
        assert [e.id async for e in entries] == ids
        assert entries.state.pages == 8

    def sync_reads() -> None:  # the gateway runs on this loop: the blocking client in a thread
        assert [e.id for e in read_sync(url, "pages", order="desc", page_size=9)] == ids[::-1]
        assert [e.id for e in read_sync(url, "pages", after=ids[10], limit=5, page_size=2)] == ids[11:16]
        w2 = [e for e in read_sync(url, "pages", worker="w2", page_size=4) if isinstance(e, LogEntry)]
        assert [e.msg for e in w2[:-1]] == [f"line {i}" for i in range(2, 50, 3)] and w2[-1].kind == "end"

    await asyncio.to_thread(sync_reads)


async def test_read_surfaces_a_trimmed_range(make_gateway: MakeGateway, redis_server: RedisServer) -> None:
    first = trimmed_job(redis_server.url, "cut")
    url = base(await make_gateway())
    oldest = stored_ids(redis_server.url, "cut")[0]
    with pytest.raises(GapError) as e:
        async with read(url, "cut", after=first) as entries:
            async for _ in entries:
                pytest.fail("the gap comes before the entries after it")
    assert (e.value.after, e.value.first_available) == (first, oldest)
    async with read(url, "cut", after=first, gaps="yield", limit=3) as entries:
        got = [x async for x in entries]
    assert got[0] == Gap(first, oldest, "trimmed") and len(got) == 4


async def test_leaving_the_block_closes_the_stream_and_a_given_client_stays_open(
    make_gateway: MakeGateway, redis_server: RedisServer
) -> None:
    publish(redis_server.url, "open", 20, end=None)
    gw = await make_gateway()
    url = base(gw)

    async def clients() -> int:
        return int((await (await gw.get("/readyz")).json())["clients"])

    async def until(n: int) -> None:
        for _ in range(200):
            if await clients() == n:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"clients != {n}: {await clients()}")

    async with follow(url, "open") as entries:
        assert [(await anext(entries)).line for _ in range(3)] == [1, 2, 3]
        await until(1)
    await until(0)
    assert [e async for e in entries] == [], "a closed follow yields nothing more"

    def in_a_thread() -> None:
        with follow_sync(url, "open") as entries:
            next(entries)
            asyncio.run_coroutine_threadsafe(until(1), loop).result(10)
        asyncio.run_coroutine_threadsafe(until(0), loop).result(10)

    loop = asyncio.get_running_loop()
    await asyncio.to_thread(in_a_thread)
    async with httpx.AsyncClient() as mine:
        async with follow(url, "open", client=mine) as entries:
            await anext(entries)
        await until(0)
        assert (await mine.get(f"{url}/healthz")).status_code == 200, "the caller's client is not closed"
