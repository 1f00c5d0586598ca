"""Where a new stream starts when it asks for ``tail=N``: the N newest matching entries."""

from __future__ import annotations

from ..ids import ZERO, StreamId, format_id
from ..redis_clients import AnyRedis
from ..storage import MAX_SCAN_PAGES, last_id, xrevrange
from . import sse
from .filter import Filter
from .items import SID, Item, make_item


async def newest_matching(
    client: AnyRedis, job: str, key: str, flt: Filter, n: int, page_entries: int
) -> tuple[StreamId, list[Item]]:
    """The ``n`` newest entries that pass ``flt``, oldest first, and the cursor to go on from: the
    newest entry looked at, so the live part continues exactly after what was scanned, matching
    or not (an id-only item at the end moves the client's Last-Event-ID there). A sparse filter
    looks back at most ``MAX_SCAN_PAGES`` pages more than ``n`` needs: fewer than ``n`` then, and
    live from there."""
    newest: StreamId | None = None
    found: list[Item] = []
    upper = "+"
    for _ in range(MAX_SCAN_PAGES + -(-n // page_entries)):
        if len(found) >= n:
            break
        page = await xrevrange(client, key, upper, count=page_entries)
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
        newest = await last_id(client, key)
    found.reverse()
    if newest == ZERO:
        return ZERO, found
    if not found or found[-1][SID] != newest:  # move the cursor past what was scanned
        found.append((newest, sse.id_only(format_id(newest)), None, None, -1, -1))
    return newest, found
