"""Reading a job back the way a client would, to check counts, order and identity; reading the
gateway's answers (errors, subscribers); a client that never reads."""

from __future__ import annotations

import asyncio
import re
import socket
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from broker import Entry, Keyspace, decode_entry, parse_meta
from broker.meta import JobMeta
from broker.script import WRITE_BATCH_LUA, WRITE_BATCH_SHA
from gateway.cli.redis_server import RedisServer


def read_job(client: redis.Redis, job: str, keyspace: Keyspace | None = None) -> list[Entry]:
    ks = keyspace or Keyspace()
    entries: list[Entry] = []
    start = "-"
    while True:
        page = client.xrange(ks.stream(job), min=start, count=10_000)
        entries.extend(decode_entry(job, i.decode(), f) for i, f in page)
        if len(page) < 10_000:
            return entries
        start = "(" + page[-1][0].decode()


def read_meta(client: redis.Redis, job: str, keyspace: Keyspace | None = None) -> JobMeta:
    meta = parse_meta(job, client.hgetall((keyspace or Keyspace()).meta(job)))
    assert meta is not None, f"job {job} has no meta"
    return meta


def assert_lines_contiguous(entries: list[Entry]) -> dict[str | None, int]:
    """Per step (None = job level), lines are exactly 1..N in stream order."""
    lines: dict[str | None, list[int]] = defaultdict(list)
    for e in entries:
        lines[e["step"]].append(e["line"])
    for step, got in lines.items():
        assert got == list(range(1, len(got) + 1)), f"step {step}: lines not 1..N"
    return {step: len(got) for step, got in lines.items()}


def assert_exactly_once(entries: list[Entry]) -> None:
    """No (src, seq) twice, and each publisher's seqs ascend in stream order."""
    last: dict[str | None, int] = {}
    for e in entries:
        src, seq = e["src"], e["seq"]
        assert seq is not None
        assert seq > last.get(src, 0), f"{src}: seq {seq} after {last.get(src)} (duplicate or reordered)"
        last[src] = seq


def count_by(entries: list[Entry], *keys: str) -> dict[Any, int]:
    counts: dict[Any, int] = defaultdict(int)
    for e in entries:
        counts[tuple(e[k] for k in keys)] += 1  # type: ignore[literal-required]
    return dict(counts)


async def error_of(resp: Any, status: int) -> dict[str, str]:
    """The ``error`` object of a JSON error answer, after checking its status and media type."""
    body = await resp.text()
    assert resp.status == status, body
    assert resp.content_type == "application/json", body
    error: dict[str, str] = (await resp.json())["error"]
    assert set(error) == {"code", "message"} and error["message"]
    return error


async def wait_for_subscribers(gw: Any, n: int, *, parked: bool = False, timeout_s: float = 4.0) -> None:
    """Until the gateway has ``n`` SSE subscribers (all parked at the feed's end, if asked)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        subs = list(gw.hub.subscribers)
        if len(subs) == n and (not parked or all(s.parked for s in subs)):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(
        f"expected {n} subscribers{' parked' if parked else ''}, have {len(gw.hub.subscribers)}"
    )


@contextmanager
def stuck_client(port: int, job: str, query: str = "", last_event_id: str = "") -> Iterator[socket.socket]:
    """An SSE client that sends its request and never reads (a tiny receive buffer, so the
    gateway's writes back up at once), closed on the way out."""
    stuck = socket.create_connection(("127.0.0.1", port))
    path = f"/v1/jobs/{job}/stream" + (f"?{query}" if query else "")
    resume = f"Last-Event-ID: {last_event_id}\r\n" if last_event_id else ""
    try:
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n{resume}\r\n".encode())
        yield stuck
    finally:
        stuck.close()


@contextmanager
def script_server(folder: Path, binary: str) -> Iterator[redis.Redis]:
    """A client of a fresh redis-server (no persistence) with the write script loaded, for tests
    that call the script directly."""
    server = RedisServer(folder, appendonly=False, binary=binary).start()
    client = redis.Redis.from_url(server.url)
    assert client.script_load(WRITE_BATCH_LUA) == WRITE_BATCH_SHA
    try:
        yield client
    finally:
        client.close()
        server.stop()


def script_constant(name: str) -> int:
    """A ``local NAME = <int>`` of the write script: the tests read its limits from their one home."""
    found = re.search(rf"^local {name} = (\d+)", WRITE_BATCH_LUA, re.M)
    assert found, f"write_batch.lua has no local {name}"
    return int(found.group(1))
