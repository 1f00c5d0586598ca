"""The SSE gateway people usually write first: one ``XREAD BLOCK`` loop per client.

Why this exists: ``benchmarks/e2e.py`` reports logbroker's gateway as a multiple of this one, on
the same workload, the same Redis key layout and the same clients. It is the obvious code, kept
honest rather than made bad on purpose: it reads 1,000 entries per ``XREAD`` (the real gateway's
``read_count``), supports ``Last-Event-ID``, sends heartbeats and frames events exactly like the
real gateway (``retry:`` preamble, ``id:``/``data:`` lines, ``event: end`` on the end entry, after
which it closes the stream). What makes it naive is where the work happens: every client has its
own cursor, its own Redis connection and its own ``XREAD BLOCK`` loop; every client decodes
(``broker.codec.decode_entry``) and JSON-encodes (``entry_json``) every entry itself; and every
event is its own ``await resp.write(...)``.

Run (from the repository root)::

    .venv/bin/python benchmarks/baselines/naive_gateway.py --port 8090 --redis-url redis://127.0.0.1:6390/0

``GET /readyz`` answers ``{"status": "ready", "clients": n}`` like the real gateway, so a benchmark
can wait until its clients are all subscribed.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio
from aiohttp import web

from broker.codec import decode_entry
from broker.keys import Keyspace
from gateway.entry_json import entry_json

HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
READ_COUNT = 1000
BLOCK_MS = 5000
RETRY_MS = 2000
_ID_RE = re.compile(r"\d{1,20}(-\d{1,20})?")
REDIS: web.AppKey[redis.asyncio.Redis] = web.AppKey("redis")
CLIENTS: web.AppKey[list[int]] = web.AppKey("clients")  # a one-element counter


def start_id(request: web.Request) -> str:
    """Resume after ``Last-Event-ID`` when the browser sends one; otherwise from the beginning."""
    last = request.headers.get("Last-Event-ID", "").strip()
    if not last:
        return "0-0"
    if _ID_RE.fullmatch(last) is None:
        raise web.HTTPBadRequest(text="Last-Event-ID must be a stream id")
    return last


def event(entry_id: str, data: str, end: bool) -> bytes:
    """One SSE event, encoded for this one client."""
    head = "event: end\n" if end else ""
    return f"{head}id: {entry_id}\ndata: {data}\n\n".encode()


async def stream(request: web.Request) -> web.StreamResponse:
    """``GET /v1/jobs/{job}/stream``: XREAD BLOCK from this client's cursor, one write per event."""
    job = request.match_info["job"]
    key = Keyspace().stream(job)
    cursor = start_id(request)
    resp = web.StreamResponse(headers=HEADERS)
    await resp.prepare(request)
    await resp.write(f"retry: {RETRY_MS}\n\n".encode())
    counter = request.app[CLIENTS]
    counter[0] += 1
    try:
        await follow(request.app[REDIS], resp, job, key, cursor)
    finally:
        counter[0] -= 1
    return resp


async def follow(
    client: redis.asyncio.Redis, resp: web.StreamResponse, job: str, key: str, cursor: str
) -> None:
    """The per-client loop: until the end entry has been written."""
    while True:
        reply: Any = await client.xread({key: cursor}, count=READ_COUNT, block=BLOCK_MS)
        if not reply:
            await resp.write(b": heartbeat\n\n")
            continue
        for raw_id, fields in reply[0][1]:
            cursor = raw_id.decode()
            entry = decode_entry(job, cursor, fields)
            ended = entry["kind"] == "end"
            await resp.write(event(cursor, entry_json(entry), ended))
            if ended:
                return


async def readyz(request: web.Request) -> web.Response:
    """Ready once Redis answers; reports the number of open streams."""
    await request.app[REDIS].ping()
    return web.json_response({"status": "ready", "clients": request.app[CLIENTS][0]})


def create_app(redis_url: str) -> web.Application:
    """The app with its Redis client (a connection pool: each blocked XREAD holds one connection)."""
    app = web.Application()

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        app[REDIS] = client = redis.asyncio.Redis.from_url(redis_url)
        app[CLIENTS] = [0]
        yield
        await client.aclose()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/v1/jobs/{job}/stream", stream)
    return app


def main(argv: list[str] | None = None) -> None:
    """Serve until SIGTERM/SIGINT; open streams are cut after a short grace period."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--redis-url", required=True)
    args = parser.parse_args(argv)
    web.run_app(create_app(args.redis_url), host=args.host, port=args.port, print=None, shutdown_timeout=2)


if __name__ == "__main__":
    main()
