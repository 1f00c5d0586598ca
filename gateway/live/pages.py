"""Pages read from Redis for clients behind a ring, kept decoded for the job's other lagging clients.

They tend to cover the same ranges, and decoding and encoding a paged entry costs far more than
sending it. A page read after cursor ``after`` holds every entry up to its last one, so it serves
any cursor in between. The kept pages are bounded in bytes (the oldest page goes first, and a
page larger than the whole bound is not kept); each page is bounded by the job's ``budget``
(``gateway.live.budget``), which also sizes the reads.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_right
from collections import deque

from ..ids import StreamId
from .budget import PageBudget
from .items import FRAME, SID, Item, sid_of


class Pages:
    def __init__(self, max_bytes: int, budget: PageBudget) -> None:
        self.max_bytes = max_bytes
        self.budget = budget
        self._pages: deque[tuple[StreamId, list[Item], int]] = deque()
        self._bytes = 0
        self._reading: dict[StreamId, asyncio.Event] = {}  # reads in flight, by their cursor
        self.hits = 0

    def reading(self, cursor: StreamId) -> asyncio.Event | None:
        """A read in flight that may cover ``cursor`` (it started at or before it): waiting for it
        is cheaper than a read of one's own when clients move in step."""
        for after, done in self._reading.items():
            if after <= cursor:
                return done
        return None

    def begin(self, cursor: StreamId) -> asyncio.Event:
        done = self._reading[cursor] = asyncio.Event()
        return done

    def end(self, cursor: StreamId, done: asyncio.Event) -> None:
        if self._reading.get(cursor) is done:
            del self._reading[cursor]
        done.set()

    def after(self, cursor: StreamId) -> list[Item] | None:
        """The rest of a kept page after ``cursor``, or ``None`` when no page covers it."""
        for after, items, _ in self._pages:
            if after <= cursor < items[-1][SID]:
                self.hits += 1
                return items[bisect_right(items, cursor, key=sid_of) :]
        return None

    def keep(self, after: StreamId, items: list[Item]) -> None:
        if not items:
            return
        size = sum(len(i[FRAME]) for i in items)
        self._pages.append((after, items, size))
        self._bytes += size
        while self._bytes > self.max_bytes:
            self._bytes -= self._pages.popleft()[2]
