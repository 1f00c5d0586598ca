"""``GET /v1/jobs/{job}/logs``: replay a job's stored entries, a page at a time (docs/design.md §5).

The cursor is the stream id, as everywhere: ``next`` is passed back as ``after`` (ascending) or
``before`` (descending), both exclusive, so consecutive pages neither overlap nor leave a hole, and
a replay page can be followed by the SSE stream with ``after=<last id>`` (docs/design.md §10).

Filters use the one implementation the stream uses (``gateway.live.filter.Filter``), including its rule
that the job's end entry always passes: it carries the per-step totals, so a filtered download
still ends with the numbers that prove it complete. A filtered page scans at most
``gateway.storage.MAX_SCAN_PAGES`` pages of ``page_entries`` before answering with what it found
and ``next`` = the last id it looked at, so a sparse filter over a huge job costs bounded work
per request.

``Accept: application/x-ndjson`` downloads the whole range as NDJSON, written page by page as it
is read, so memory stays bounded by one page whatever the size of the job.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeGuard
from urllib.parse import quote

from aiohttp import web

from broker.codec import decode_entry
from broker.constants import KINDS, LEVELS, NDJSON
from broker.entry import Entry
from broker.errors import CodecError

from ..entry_json import entry_json
from ..errors import bad_request, not_found
from ..ids import MAX_ID, ZERO, StreamId, format_id, parse_id
from ..live.filter import Filter
from ..live.frames import reset_data
from ..live.items import Item
from ..redis_clients import AnyRedis
from ..settings import GatewaySettings
from ..storage import MAX_SCAN_PAGES, RawEntry, standing, xrange, xrevrange
from .params import filter_of, int_param, job_of
from .state import GATEWAY, Gateway

log = logging.getLogger(__name__)

_WRITE_BYTES = 1024 * 1024  # an NDJSON download writes at most about this much at once
GAP_HEADER = "Logbroker-Gap"  # an ascending NDJSON download that starts in a trimmed range
RESET_HEADER = "Logbroker-Reset"  # a download whose ``after`` names lost data
_UNSAFE_FILENAME_RE = re.compile(r"[^A-Za-z0-9._:-]")


@dataclass(slots=True)
class _Range:
    """What is left to read: Redis range bounds (``-``/``+`` or ``(<id>``) and the direction."""

    lo: str
    hi: str
    desc: bool
    empty: bool = False

    async def read(self, client: AnyRedis, key: str, count: int) -> list[RawEntry]:
        if self.empty:
            return []
        if self.desc:
            return await xrevrange(client, key, self.hi, self.lo, count)
        return await xrange(client, key, self.lo, self.hi, count)

    def advance(self, last_id: str) -> None:
        """Continue strictly past ``last_id`` (the last entry read) in the reading direction."""
        if self.desc:
            self.hi = "(" + last_id
        else:
            self.lo = "(" + last_id


async def get_logs(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    job = job_of(request)
    flt = filter_of(request.query)
    rng = _range_of(request.query)
    after = parse_id(request.query["after"], "after") if "after" in request.query else None
    ndjson = _wants_ndjson(request.headers.get("Accept", ""), request.query.get("format"))
    limit = _limit_of(gw.settings, request.query, optional=ndjson)
    key, meta_key = gw.keyspace.job_keys(job)[:2]
    if not await gw.redis.exists(key, meta_key):
        raise not_found(job)
    start = after or ZERO
    if ndjson:
        # a whole range: the gap and reset (if any) are known before the first line: headers
        gap, reset = await _signals(gw, job, start, not rng.empty and not rng.desc)
        return await _download(gw, request, job, flt, rng, limit, gap, reset)
    entries, next_id = await _page(gw, job, flt, rng, limit or gw.settings.replay_default_limit)
    # a descending page says the gap once it reaches the oldest entry kept; later pages of an
    # ascending range start after the gap
    gap, reset = await _signals(gw, job, start, not rng.empty and (not rng.desc or next_id is None))
    body = (
        '{"entries":[' + ",".join(entries) + '],"next":' + json.dumps(next_id)
        + ',"gap":' + json.dumps(gap) + ',"reset":' + json.dumps(reset) + "}"
    )  # fmt: skip
    return web.Response(text=body, content_type="application/json")


Signal = dict[str, str | None]


async def _signals(
    gw: Gateway, job: str, start: StreamId, gap_due: bool
) -> tuple[Signal | None, Signal | None]:
    """The ``gap`` and ``reset`` objects (as the stream's events). ``gap`` (when ``gap_due``):
    retention trimmed entries between the start of the requested range and what this page holds.
    ``reset``: ``after`` names an entry older than the job's first one: the data it came from is
    lost, and the answer holds the job's entries from its (new) start."""
    if not gap_due and start == ZERO:
        return None, None
    where = await standing(gw.redis, gw.keyspace, job, start)
    reset = reset_data(start, where.first_ever) if where.lost else None
    if not gap_due or where.trimmed_to is None:
        return None, reset
    gap_from = ZERO if where.lost else start
    gap: Signal = {
        "after": format_id(gap_from),
        "first_available": format_id(where.trimmed_to),
        "reason": "trimmed",
    }
    return gap, reset


def _range_of(query: Mapping[str, str]) -> _Range:
    order = query.get("order", "asc")
    if order not in ("asc", "desc"):
        raise bad_request("invalid_parameter", f"order must be asc or desc, got {order!r:.40}")
    after = parse_id(query["after"], "after") if "after" in query else None
    before = parse_id(query["before"], "before") if "before" in query else None
    # Redis refuses an exclusive bound past either end of the id space: such a range is just empty.
    empty = after == MAX_ID or before == ZERO
    lo = "-" if after is None else "(" + format_id(after)
    hi = "+" if before is None else "(" + format_id(before)
    return _Range(lo, hi, order == "desc", empty)


def _limit_of(settings: GatewaySettings, query: Mapping[str, str], *, optional: bool) -> int | None:
    """``limit`` is 1..replay_max_limit; a download without one covers the whole range."""
    if optional and "limit" not in query:
        return None
    return int_param(query, "limit", settings.replay_default_limit, 1, settings.replay_max_limit)


def _wants_ndjson(accept: str, fmt: str | None) -> bool:
    """``Accept: application/x-ndjson``, or ``?format=ndjson`` for a plain download link."""
    if fmt is not None:
        if fmt not in ("json", "ndjson"):
            raise bad_request("invalid_parameter", f"format must be json or ndjson, got {fmt!r:.40}")
        return fmt == "ndjson"
    for part in accept.split(","):
        media, *params = (p.strip().lower() for p in part.split(";"))
        if media == NDJSON:
            return not any(p.replace(" ", "") in ("q=0", "q=0.0", "q=0.00", "q=0.000") for p in params)
    return False


def _decode(job: str, raw_id: bytes, fields: dict[bytes, bytes]) -> tuple[str, Entry | None]:
    """An undecodable entry is skipped (and logged), like in the stream; its id still moves the cursor."""
    entry_id = raw_id.decode()
    try:
        return entry_id, decode_entry(job, entry_id, fields)
    except CodecError as e:
        log.error("job %s entry %s cannot be decoded, skipped: %s", job, entry_id, e)
        return entry_id, None


def _passes(entry: Entry | None, flt: Filter) -> TypeGuard[Entry]:
    if entry is None:
        return False
    item: Item = (ZERO, b"", entry["step"], entry["worker"], LEVELS[entry["level"]], KINDS[entry["kind"]])
    return flt.passes(item)


async def _page(gw: Gateway, job: str, flt: Filter, rng: _Range, limit: int) -> tuple[list[str], str | None]:
    """Up to ``limit`` matching entries as JSON, within about ``replay_max_bytes`` (one entry at
    least), and where the next page starts (``None``: range done). Counted in bytes too: a page
    of 500 entries of 64 KB control characters was 186 MiB of JSON held at once."""
    key = gw.keyspace.stream(job)
    count = gw.settings.page_entries if flt.active else limit + 1
    budget = gw.settings.replay_max_bytes
    found: list[str] = []
    size = 0
    last: str | None = None  # the last entry looked at
    last_found: str | None = None
    for _ in range(MAX_SCAN_PAGES):
        page = await rng.read(gw.redis, key, count)
        for raw_id, fields in page:
            last, entry = _decode(job, raw_id, fields)
            if _passes(entry, flt):
                if len(found) == limit or size >= budget:
                    return found, last_found
                text = entry_json(entry)
                found.append(text)
                size += len(text)
                last_found = last
        if len(page) < count:
            return found, None
        assert last is not None
        if len(found) == limit or size >= budget:
            return found, last
        rng.advance(last)
    return found, last


async def _download(
    gw: Gateway,
    request: web.Request,
    job: str,
    flt: Filter,
    rng: _Range,
    limit: int | None,
    gap: Signal | None,
    reset: Signal | None,
) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Disposition": _disposition(job, flt.step)})
    for header, signal in ((GAP_HEADER, gap), (RESET_HEADER, reset)):
        if signal is not None:
            resp.headers[header] = ", ".join(f"{k}={v or 'none'}" for k, v in signal.items())
    resp.content_type = NDJSON
    resp.charset = "utf-8"
    await resp.prepare(request)
    try:
        await _write_range(gw, resp, job, flt, rng, limit)
    except Exception:
        # Headers are gone: abort, so the client sees a truncated download rather than a short file.
        if request.transport is not None:
            request.transport.abort()
        raise
    await resp.write_eof()
    return resp


async def _write_range(
    gw: Gateway, resp: web.StreamResponse, job: str, flt: Filter, rng: _Range, limit: int | None
) -> None:
    """One write per page (each awaited, so a slow client slows the reads instead of growing memory)."""
    key = gw.keyspace.stream(job)
    count = gw.settings.page_entries
    left = limit
    while left is None or left > 0:
        page = await rng.read(gw.redis, key, count)
        lines: list[str] = []
        size = taken = 0
        for raw_id, fields in page:
            _, entry = _decode(job, raw_id, fields)
            if _passes(entry, flt):
                lines.append(entry_json(entry) + "\n")
                size += len(lines[-1])
                taken += 1
                if size >= _WRITE_BYTES:  # big entries: write as we go, never a page at once
                    await resp.write("".join(lines).encode())
                    lines, size = [], 0
                if taken == left:
                    break
        if lines:
            await resp.write("".join(lines).encode())
        if left is not None:
            left -= taken
        if len(page) < count:
            return
        rng.advance(page[-1][0].decode())


def _disposition(job: str, step: str | None) -> str:
    """``attachment; filename="<job>[-<step>].ndjson"``: an ASCII-safe name, and the exact one
    (RFC 6266 ``filename*``) when the step holds characters a plain filename cannot."""
    name = f"{job}-{step}.ndjson" if step else f"{job}.ndjson"
    safe = _UNSAFE_FILENAME_RE.sub("_", name)
    if safe == name:
        return f'attachment; filename="{name}"'
    return f"attachment; filename=\"{safe}\"; filename*=UTF-8''{quote(name, safe='')}"
