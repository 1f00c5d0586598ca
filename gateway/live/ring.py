"""A job's ring in one gateway: its recent entries, each decoded and SSE-encoded once (docs/design.md §6).

The ring covers the stream from ``base`` (exclusive) to ``last`` (inclusive), bounded by entries
and bytes; when it overflows, the oldest frames go and ``base`` moves forward. A subscriber whose
cursor is behind ``base`` is not dropped: it pages from Redis at its own pace (``Pages`` keeps
those pages for the job's other lagging clients) and rejoins the ring once caught up. Writes are
shared too: a small append goes to every parked client as one ``Batch``, and clients at the same
cursor reuse one ``Shared`` write.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping, Sequence
from typing import Protocol

from broker.constants import KIND_END

from ..ids import ZERO, StreamId
from .budget import PageBudget
from .frames import Batch, Shared, unfiltered
from .items import FRAME, KIND, SID, Item, make_item
from .pages import Pages

_SHARED_MAX = 64  # distinct cursors whose next write a ring keeps between two appends


class Listener(Protocol):
    """A subscriber as the ring sees it. A ``parked`` one is idle at the ring's last entry with
    nothing of its own pending: the ring writes a small batch to it directly (``push``), which
    saves waking its task, building its bytes and a write of its own for every read."""

    parked: bool

    def wake(self) -> None: ...

    def push(self, batch: Batch) -> None: ...


class Ring:
    """Recent frames of one job, shared by all its subscribers in this process."""

    def __init__(
        self,
        job: str,
        key: str,
        start: StreamId,
        max_entries: int,
        max_bytes: int,
        push_max_bytes: int = 32 * 1024,
        *,
        page: PageBudget,
        first_id: StreamId | None = None,
        meta_key: str = "",
    ) -> None:
        self.job = job
        self.key = key
        self.meta_key = meta_key  # where the reader checks ``first_id`` after a Redis outage
        self.base = start
        self.last = start
        # The job's first entry ever: which incarnation of the job the ring holds. ``None`` while
        # the job has no entry; set by the first append then. ``generation`` counts resets.
        self.first_id = first_id
        self.generation = 0
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.push_max_bytes = push_max_bytes  # larger appends go through each subscriber's own writes
        self.holders = 0  # subscriptions holding the ring (``Hub.ring``)
        self._items: list[Item] = []
        self._sids: list[StreamId] = []
        self._head = 0
        self._bytes = 0
        self._listeners: set[Listener] = set()
        self._shared: dict[tuple[StreamId, int], Shared] = {}  # see ``frames_after``
        self.pages = Pages(max_bytes // 2, page)  # history for lagging clients: half the ring's budget

    def __len__(self) -> int:
        return len(self._items) - self._head

    @property
    def nbytes(self) -> int:
        return self._bytes

    def listen(self, listener: Listener) -> None:
        """Every append wakes ``listener`` or, when it is parked, pushes the new frames to it."""
        self._listeners.add(listener)

    def unlisten(self, listener: Listener) -> None:
        self._listeners.discard(listener)

    def append(self, raw: Sequence[tuple[bytes, Mapping[bytes, bytes]]]) -> int:
        before = self.last
        start = len(self._items)
        size = 0
        for raw_id, fields in raw:
            item = make_item(self.job, raw_id, fields)
            if item[SID] <= self.last:
                continue
            self._items.append(item)
            self._sids.append(item[SID])
            size += len(item[FRAME])
            self.last = item[SID]
        added = len(self._items) - start
        if added:
            if self.first_id is None and before == ZERO:
                self.first_id = self._items[start][SID]  # the ring has watched the job from its start
            self._shared.clear()
            self._bytes += size
            pushable = self._pushable(start, size)
            batch: Batch | None = None
            for listener in list(self._listeners):  # a push can end a stream and unlisten it
                if pushable and listener.parked:
                    batch = batch or Batch(before, self._items[start:])
                    listener.push(batch)
                else:
                    listener.wake()
            self._trim()
        return added

    def reset(self, first_id: StreamId | None) -> None:
        """The job's stored data is not what the ring holds any more (Redis came back without it,
        or the job was written again after it expired): drop everything, read the job again from
        its start, and wake every listener, who tells its client with a ``reset`` event."""
        self._items, self._sids, self._head, self._bytes = [], [], 0, 0
        self._shared.clear()
        self.pages = Pages(self.pages.max_bytes, self.pages.budget)
        self.base = self.last = ZERO
        self.first_id = first_id
        self.generation += 1
        for listener in list(self._listeners):
            listener.parked = False
            listener.wake()

    def _pushable(self, start: int, size: int) -> bool:
        """Small enough to push, and ending nowhere but at its last item (frames after an end
        event are never sent)."""
        if size > self.push_max_bytes:
            return False
        return all(self._items[k][KIND] != KIND_END for k in range(start, len(self._items) - 1))

    def _trim(self) -> None:
        while len(self) > self.max_entries or (self._bytes > self.max_bytes and len(self) > 1):
            item = self._items[self._head]
            self._head += 1
            self._bytes -= len(item[FRAME])
            self.base = item[SID]
        if self._head > 1024 and self._head * 2 > len(self._items):
            del self._items[: self._head]
            del self._sids[: self._head]
            self._head = 0

    def frames_after(self, cursor: StreamId, max_bytes: int) -> Shared | None:
        """``frames()`` of what follows ``cursor`` for an unfiltered client, built once for all
        the clients at the same cursor until the next append (clients of a job tend to move in
        step, so most writes reuse the bytes another client's write built); ``None`` when the
        cursor is behind the ring."""
        key = (cursor, max_bytes)
        shared = self._shared.get(key)
        if shared is None:
            items = self.after(cursor)
            if items is None:
                return None
            shared = Shared(*unfiltered(items, max_bytes))
            if len(self._shared) >= _SHARED_MAX:
                self._shared.clear()
            self._shared[key] = shared
        return shared

    def after(self, cursor: StreamId, limit: int = 1024) -> list[Item] | None:
        """Up to ``limit`` items after ``cursor``; ``None`` when the cursor is behind the ring
        (page from Redis). Bounded, so a client far behind holds a small slice, not the ring."""
        if cursor < self.base:
            return None
        start = bisect_right(self._sids, cursor, lo=self._head)
        return self._items[start : start + limit]
