"""Redis restarted without its data: clients are told with a ``reset`` event, never left to see
line numbers jump back (docs/design.md §5; issue 13, point 9). Real redis-server, no persistence."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse

from broker.client import LogEntry, Reset, ResetError, follow_sync
from gateway.cli.redis_server import RedisServer
from tests.support.fixture_types import Client, MakeGateway, ServerFactory
from tests.support.gateway_process import GatewayProcess
from tests.support.jobs import publish_entries
from tests.support.sse_client import Event, parse

pytestmark = pytest.mark.server_matrix  # Redis restarts: once per server (tests/conftest.py)
CLI = [sys.executable, "-c", "import sys; from gateway.cli import main; sys.exit(main())"]


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


def _restart_empty(server: RedisServer) -> None:
    server.kill()  # a Redis that keeps nothing on disk crashes and comes back
    server.start()


def test_the_client_raises_a_reset_and_with_gaps_yield_goes_on(
    redis_server_factory: ServerFactory, tmp_path: Path
) -> None:
    """broker.client: ``ResetError`` by default; ``gaps="yield"`` gives a ``Reset`` marker and the
    job's new incarnation, then stops at its end."""
    server = redis_server_factory(appendonly=False)
    gw = GatewayProcess(server.url, tmp_path / "gw.log").start()
    try:
        publish_entries(server.url, "cl", 4, end=False)
        with follow_sync(gw.url, "cl") as strict:
            held = [next(strict) for _ in range(4)]
            _restart_empty(server)
            publish_entries(server.url, "cl", 2)
            with pytest.raises(ResetError) as raised:
                next(strict)
        assert raised.value.after == held[-1].id and raised.value.reason == "data_lost"
        with follow_sync(gw.url, "cl", after=held[-1].id, gaps="yield") as lenient:
            items = list(lenient)
        assert isinstance(items[0], Reset) and items[0].after == held[-1].id
        rest = [i for i in items[1:] if isinstance(i, LogEntry)]
        assert [e.line for e in rest] == [1, 2, 1] and rest[-1].kind == "end"
    finally:
        gw.stop()


def test_tail_says_the_job_was_reset_and_follows_it_to_its_end(
    redis_server_factory: ServerFactory, tmp_path: Path
) -> None:
    server = redis_server_factory(appendonly=False)
    gw = GatewayProcess(server.url, tmp_path / "gw.log").start()
    try:
        publish_entries(server.url, "tl", 3, end=False)
        cmd = [*CLI, "tail", "--url", gw.url, "tl", "--json"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        first = [proc.stdout.readline() for _ in range(3)]
        _restart_empty(server)
        publish_entries(server.url, "tl", 2)
        out, err = proc.communicate(timeout=60)
    finally:
        gw.stop()
    assert proc.returncode == 0, err
    assert "the job's data was lost" in err
    lines = [json.loads(x)["line"] for x in [*first, *out.splitlines()]]
    assert lines == [1, 2, 3, 1, 2, 1]
