"""Redis restarted without its data: clients are told with a ``reset`` event, never left to see
line numbers jump back (docs/design.md §5; issue 13, point 9). Real redis-server, no persistence."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import ClientResponse

from tests.support.fixture_types import Client, MakeGateway, ServerFactory
from tests.support.jobs import publish_entries
from tests.support.sse_client import Event, parse


async def events_until(resp: ClientResponse, done: Any, timeout_s: float = 20) -> list[Event]:
    """Read the stream on until ``done(events read by this call)`` holds."""
    raw = b""
    async with asyncio.timeout(timeout_s):
        while True:
            chunk = await resp.content.readany()
            assert chunk, "the stream ended early"
            raw += chunk
            events = parse(raw).events
            if done(events):
                return events


def entries(events: list[Event]) -> list[dict[str, Any]]:
    return [e.json() for e in events if e.event in ("message", "end")]


async def test_a_live_client_is_reset_when_redis_comes_back_empty(
    make_gateway: MakeGateway, redis_server_factory: ServerFactory
) -> None:
    """Before: the new entries followed the old ones on the same stream, lines 5790 -> 1, and the
    end totals disagreed with what the client held."""
    server = redis_server_factory(appendonly=False)
    publish_entries(server.url, "lost", 30, end=False)
    client = await make_gateway(redis_url=server.url)
    resp = await client.get("/v1/jobs/lost/stream")
    before = await events_until(resp, lambda ev: len(ev) == 30)
    old_last = before[-1].id
    server.kill()  # a crash of a Redis that keeps nothing on disk
    server.start()
    publish_entries(server.url, "lost", 5)  # the workers go on: a new incarnation of the job
    events = await events_until(resp, lambda ev: any(e.event == "end" for e in ev))  # what came next
    assert events[0].event == "reset", [e.event for e in events]
    assert events[0].id == "0-0"
    reset = events[0].json()
    assert reset["after"] == old_last and reset["reason"] == "data_lost"
    rest = entries(events[1:])
    assert [e["line"] for e in rest] == [1, 2, 3, 4, 5, 1], "the new incarnation from its start"
    assert rest[-1]["fields"]["totals"]["entries"] == 5 == len(rest) - 1
    resp.close()


async def test_a_reconnect_with_a_cursor_from_lost_data_is_reset(
    make_gateway: MakeGateway, redis_server_factory: ServerFactory
) -> None:
    """Before: an old Last-Event-ID got the new entries after it, with no gap and no reset."""
    server = redis_server_factory(appendonly=False)
    publish_entries(server.url, "again", 10, end=False)
    client = await make_gateway(redis_url=server.url)
    page = await (await client.get("/v1/jobs/again/logs")).json()
    old_last = page["entries"][-1]["id"]
    server.kill()
    server.start()
    publish_entries(server.url, "again", 3)
    resp = await client.get("/v1/jobs/again/stream", headers={"Last-Event-ID": old_last})
    events = parse(await asyncio.wait_for(resp.read(), 20)).events
    assert [e.event for e in events] == ["reset", "message", "message", "message", "end"]
    assert events[0].json() == {
        "after": old_last,
        "first_available": events[1].id,
        "reason": "data_lost",
    }
    # replay says the same, and answers from the job's start
    replay = await (await client.get(f"/v1/jobs/again/logs?after={old_last}")).json()
    assert replay["reset"] == events[0].json() and len(replay["entries"]) == 4
    download = await client.get(f"/v1/jobs/again/logs?after={old_last}&format=ndjson")
    assert download.headers["Logbroker-Reset"] == (
        f"after={old_last}, first_available={events[1].id}, reason=data_lost"
    )
    # a cursor of this incarnation, and the start, are not reset
    fine = await client.get("/v1/jobs/again/stream", headers={"Last-Event-ID": events[1].id})
    assert parse(await asyncio.wait_for(fine.read(), 20)).events[0].event == "message"
    for start in ("0-0", "0-1"):
        same = await (await client.get(f"/v1/jobs/again/logs?after={start}")).json()
        assert same["reset"] is None


async def test_a_made_up_cursor_before_the_job_is_answered_from_its_start(api: Client) -> None:
    """The rule is the cursor against the job's first entry: a client holding nothing loses
    nothing by a reset, and a cursor of the job itself never gets one."""
    job = [{"msg": "a"}, {"msg": "end", "kind": "end", "status": "ok"}]
    await api.post("/v1/jobs/made-up/logs", json=job)
    resp = await api.get("/v1/jobs/made-up/stream", headers={"Last-Event-ID": "1000-0"})
    events = parse(await asyncio.wait_for(resp.read(), 10)).events
    assert [e.event for e in events] == ["reset", "message", "end"]
