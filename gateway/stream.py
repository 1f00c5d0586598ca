"""``GET /v1/jobs/{job}/stream``: the SSE route (DESIGN §5).

Start position: ``Last-Event-ID`` header, else ``?after=<id>`` (``$`` = only new entries), else
``?tail=N`` (the N newest matching entries, then live), else the beginning. A client coming back
after the end event gets 204, which tells EventSource to stop reconnecting.
"""

from __future__ import annotations

from aiohttp import web

from . import sse
from .context import GATEWAY, Gateway
from .errors import ApiError
from .feed import SID, Filter, Item, frames, gap_frame, make_item
from .ids import ZERO, StreamId, format_id, from_redis, parse_id
from .params import filter_of, int_param, job_of
from .streams import xrevrange
from .subscriber import Subscriber, trimmed_since


async def stream_job(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    job = job_of(request)
    flt = filter_of(request.query)
    key = gw.keyspace.stream(job)
    cursor, initial = await _start(gw, request, job, key, flt)
    end_id = await gw.redis.hget(gw.keyspace.meta(job), "end_id")
    if end_id is not None and cursor >= from_redis(end_id) and not initial:
        return web.Response(status=204)
    if len(gw.subscribers) >= gw.settings.max_clients:
        raise ApiError(503, "too_many_clients", "this gateway is at its client limit", {"Retry-After": "5"})
    resp = web.StreamResponse(headers=sse.HEADERS)
    await resp.prepare(request)
    if request.transport is not None:  # a write waits until the socket has taken all of the last one
        request.transport.set_write_buffer_limits(high=0)
    async with gw.fanout.subscribe(job) as feed:
        sub = Subscriber(gw, request, resp, feed, flt, cursor)
        gw.subscribers.add(sub)
        gw.metrics.clients.inc()
        try:
            await sub.write(sse.retry(gw.settings.retry_ms), None)
            if initial:
                blob, last, ended, count = frames(initial, flt)  # at most replay_max_limit entries, once
                await sub.write(blob, last, count)
                if ended:
                    return resp
            else:
                first_available = await trimmed_since(gw, job, cursor)
                if first_available is not None:
                    frame, sub.cursor = gap_frame(cursor, first_available)
                    await sub.write(frame, None)
            await sub.run()
        except Exception:
            if request.transport is not None:
                request.transport.abort()
            raise
        finally:
            sub.report()
            gw.subscribers.discard(sub)
            gw.metrics.clients.dec()
    return resp


async def _start(
    gw: Gateway, request: web.Request, job: str, key: str, flt: Filter
) -> tuple[StreamId, list[Item]]:
    _validate_start(gw, request)
    header = request.headers.get("Last-Event-ID", "").strip()
    if header:
        return parse_id(header, "Last-Event-ID"), []
    after = request.query.get("after")
    if after is not None:
        if after.strip() == "$":
            return await gw.fanout.last_id(key), []
        return parse_id(after, "after"), []
    if "tail" in request.query:
        n = int_param(request.query, "tail", 0, 0, gw.settings.replay_max_limit)
        return await _tail(gw, job, key, flt, n)
    return ZERO, []


def _validate_start(gw: Gateway, request: web.Request) -> None:
    """Every start parameter is checked, even one that a higher-priority one overrides."""
    after = request.query.get("after")
    if after is not None and after.strip() != "$":
        parse_id(after, "after")
    int_param(request.query, "tail", 0, 0, gw.settings.replay_max_limit)


async def _tail(gw: Gateway, job: str, key: str, flt: Filter, n: int) -> tuple[StreamId, list[Item]]:
    """The ``n`` newest matching entries; the cursor is the newest entry looked at, so the live
    part continues exactly after what was scanned, matching or not."""
    newest: StreamId | None = None
    found: list[Item] = []
    upper = "+"
    while len(found) < n:
        page = await xrevrange(gw.redis, key, upper, count=gw.settings.page_entries)
        if not page:
            break
        for raw_id, fields in page:
            item = make_item(job, raw_id, fields)
            newest = newest or item[SID]
            if flt.passes(item):
                found.append(item)
                if len(found) == n:
                    break
        upper = "(" + page[-1][0].decode()
    if newest is None:
        newest = await gw.fanout.last_id(key)
    found.reverse()
    if newest == ZERO:
        return ZERO, found
    if not found or found[-1][SID] != newest:  # move the cursor past what was scanned
        found.append((newest, sse.id_only(format_id(newest)), None, None, -1, -1))
    return newest, found
