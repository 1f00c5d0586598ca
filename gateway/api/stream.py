"""``GET /v1/jobs/{job}/stream``: the SSE route (docs/design.md §5); the stream itself is ``gateway.live``.

Start position: ``Last-Event-ID`` header, else ``?after=<id>`` (``$`` = only new entries), else
``?tail=N`` (the N newest matching entries, then live), else the beginning. A client coming back
after the end event gets 204, which tells EventSource to stop reconnecting.
"""

from __future__ import annotations

from aiohttp import web

from broker.constants import META_END_ID

from ..ids import ZERO, StreamId, from_redis, parse_id
from ..live.budget import PageBudget
from ..live.filter import Filter
from ..live.items import Item
from ..live.start import tail_start
from ..storage import last_id
from .params import filter_of, int_param, job_of
from .state import GATEWAY, Gateway


async def stream_job(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    job = job_of(request)
    flt = filter_of(request.query)
    cursor, initial = await _start(gw, request, job, flt)
    end_id = await gw.redis.hget(gw.keyspace.meta(job), META_END_ID)
    if end_id is not None and cursor >= from_redis(end_id) and not initial:
        return web.Response(status=204)
    async with gw.hub.subscribe(job, flt, cursor) as sub:
        sub.start_with(initial)
        return await sub.serve(request)


async def _start(gw: Gateway, request: web.Request, job: str, flt: Filter) -> tuple[StreamId, list[Item]]:
    _validate_start(gw, request)
    key = gw.keyspace.stream(job)
    header = request.headers.get("Last-Event-ID", "").strip()
    if header:
        return parse_id(header, "Last-Event-ID"), []
    after = request.query.get("after")
    if after is not None:
        if after.strip() == "$":
            return await last_id(gw.redis, key), []
        return parse_id(after, "after"), []
    if "tail" in request.query:
        n = int_param(request.query, "tail", 0, 0, gw.settings.replay_max_limit)
        s = gw.settings
        return await tail_start(gw.redis, job, key, flt, n, PageBudget(s.page_max_bytes, s.page_entries))
    return ZERO, []


def _validate_start(gw: Gateway, request: web.Request) -> None:
    """Every start parameter is checked, even one that a higher-priority one overrides."""
    after = request.query.get("after")
    if after is not None and after.strip() != "$":
        parse_id(after, "after")
    int_param(request.query, "tail", 0, 0, gw.settings.replay_max_limit)
