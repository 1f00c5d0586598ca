"""How much of a job to read from Redis at once: pages bounded in bytes, not only in entries.

A page for a lagging client holds at most ``max_entries`` entries and about ``max_bytes`` of
frames: it ends with the entry that reaches ``max_bytes`` (one at least), and the next page
starts right after it, at the client's cursor once the page is sent, so nothing is skipped or
repeated. Counted in entries alone, 500 entries of 65 KB control characters (JSON-escaped to
~390 KB each) were a 195 MB page, held for the stalled clients behind the ring. A ``tail=N``
start sizes the reads of its backward scan the same way (in stored bytes: it keeps only ids).

``XRANGE`` and ``XREVRANGE`` limit a read by ``COUNT`` only. A Lua script could stop at a byte
total, but it would run on Redis' single thread for every page of every lagging client, and be
one more script to keep in step with the stream layout. So the ``COUNT`` of the next read is
``max_bytes`` over the bytes per entry that the job's reads have seen so far. A bigger average
counts at once; a smaller one only halves the estimate per read, so after a page of big entries
the reads start small and double while the entries stay small: a read pulls little more than
``max_bytes`` unless the sizes jump within the job. Even then the page stays bounded: what a read
brought beyond the budget is dropped undecoded (the next page reads it again), and only the raw
reply, a transient, can exceed it (at most ``max_entries`` stored entries, as before). A job's
first read asks for ``FIRST_COUNT`` entries, when their size is not known yet.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from .items import FRAME, Item, make_item

FIRST_COUNT: Final = 16  # a job's first read: a few entries, whatever their size


class PageBudget:
    """The read size of one job (shared by its lagging clients) or of one ``tail=N`` scan."""

    __slots__ = ("_per_entry", "max_bytes", "max_entries")

    def __init__(self, max_bytes: int, max_entries: int) -> None:
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self._per_entry = 0.0  # bytes per entry, as estimated from the reads so far (0: none yet)

    def count(self) -> int:
        """``COUNT`` for the next read."""
        if not self._per_entry:
            return min(FIRST_COUNT, self.max_entries)
        return max(1, min(self.max_entries, int(self.max_bytes / self._per_entry)))

    def saw(self, entries: int, nbytes: int) -> None:
        """What one read held: ``entries`` of ``nbytes`` in all."""
        if entries:
            self._per_entry = max(nbytes / entries, self._per_entry / 2)

    def take(self, job: str, raw: Sequence[tuple[bytes, Mapping[bytes, bytes]]]) -> list[Item]:
        """The page of a read: its entries decoded up to the one whose frame brings the page to
        ``max_bytes`` (one at least); the rest is left undecoded, for the next page."""
        items: list[Item] = []
        size = 0
        for raw_id, fields in raw:
            item = make_item(job, raw_id, fields)
            items.append(item)
            size += len(item[FRAME])
            if size >= self.max_bytes:
                break
        self.saw(len(items), size)
        return items


def stored_bytes(fields: Mapping[bytes, bytes]) -> int:
    """An entry's size as Redis returned it: what a scan that keeps nothing holds per entry."""
    return sum(len(value) for value in fields.values())
