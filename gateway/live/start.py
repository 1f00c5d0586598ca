"""Where a new stream starts when it asks for ``tail=N``: just before the N newest matching entries."""

from __future__ import annotations

from ..ids import ZERO, StreamId, format_id, from_redis, predecessor
from ..redis_clients import AnyRedis
from ..storage import MAX_SCAN_PAGES, last_id, xrevrange
from . import sse
from .budget import PageBudget, stored_bytes
from .filter import Filter
from .items import Item, bare_item


async def tail_start(
    client: AnyRedis, job: str, key: str, flt: Filter, n: int, budget: PageBudget
) -> tuple[StreamId, list[Item]]:
    """The cursor of a ``tail=n`` stream, and what to send before anything else.

    The cursor is just before the oldest of the ``n`` newest entries that pass ``flt``: the
    stream then sends them, and whatever follows, as it sends pages to a client behind the ring,
    so a start holds one page at most, whatever ``n`` and the size of the entries. The scan
    backwards keeps only ids, one read of about ``budget.max_bytes`` at a time. A sparse filter
    looks back at most ``MAX_SCAN_PAGES`` pages of ``budget.max_entries`` more than ``n`` needs:
    fewer than ``n`` then. When nothing matched, the cursor is the newest entry looked at, with
    an id-only item that moves the client's Last-Event-ID there, and the stream goes live.
    """
    per_page = budget.max_entries
    most = (MAX_SCAN_PAGES + -(-n // per_page)) * per_page  # entries looked at, at most
    newest: StreamId | None = None
    oldest_found: StreamId | None = None
    found = scanned = 0
    upper = "+"
    while found < n and scanned < most:
        count = min(budget.count(), most - scanned)
        if not flt.active:
            count = min(count, n - found)
        page = await xrevrange(client, key, upper, count=count)
        if not page:
            break
        budget.saw(len(page), sum(stored_bytes(fields) for _, fields in page))
        scanned += len(page)
        for raw_id, fields in page:
            sid = from_redis(raw_id)
            newest = newest or sid
            if flt.passes(bare_item(job, raw_id, fields)):
                found += 1
                oldest_found = sid
                if found == n:
                    break
        if len(page) < count:
            break
        upper = "(" + page[-1][0].decode()
    if oldest_found is not None:
        return predecessor(oldest_found), []
    if newest is None:
        newest = await last_id(client, key)
    if newest == ZERO:
        return ZERO, []
    return newest, [(newest, sse.id_only(format_id(newest)), None, None, -1, -1)]
