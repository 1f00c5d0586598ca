"""A job's live feed in one gateway: recent entries, each decoded and SSE-encoded once (DESIGN §6).

The feed covers the stream from ``base`` (exclusive) to ``last`` (inclusive). Its ring is bounded
by entries and bytes; when it overflows, the oldest frames go and ``base`` moves forward. A
subscriber whose cursor is behind ``base`` is not dropped: it pages from Redis at its own pace
(see ``gateway.subscriber``) and rejoins the ring when it has caught up; the pages it reads are
kept decoded for the job's other lagging clients (``Pages``). Writes are shared too: a small
append goes to every parked client as one ``Batch``, and clients at the same cursor reuse one
``Shared`` write.
"""

from __future__ import annotations

import asyncio
import json
import logging
from bisect import bisect_right
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple, Protocol

from broker.codec import decode_entry, entry_json_bytes
from broker.constants import KIND_END, KINDS, LEVELS
from broker.entry import Entry
from broker.errors import CodecError

from . import sse
from .ids import StreamId, format_id, from_redis

log = logging.getLogger(__name__)
KIND_CORRUPT = -1


# An item is a plain tuple, read by these indexes, not a NamedTuple: the collector stops tracking
# a plain tuple of strings, bytes and numbers at the first collection it survives, but never an
# instance of a tuple subclass. Rings and pages hold tens of thousands of items, and every full
# collection walked all of them, a pause of every stream of the gateway at once.
Item = tuple[StreamId, bytes, str | None, str | None, int, int]  # sid, frame, step, worker, level, kind
SID: Final = 0
FRAME: Final = 1
STEP: Final = 2
WORKER: Final = 3
LEVEL: Final = 4
KIND: Final = 5


def make_item(job: str, raw_id: bytes | str, fields: Mapping[bytes, bytes]) -> Item:
    """Decode and encode one stored entry; an undecodable one still advances cursors."""
    entry_id = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
    sid = from_redis(entry_id)
    try:
        entry = decode_entry(job, entry_id, fields)
    except CodecError as e:
        log.error("job %s entry %s cannot be decoded, skipped with its id: %s", job, entry_id, e)
        return (sid, sse.id_only(entry_id), None, None, 0, KIND_CORRUPT)
    return item_of(entry, sid)


def item_of(entry: Entry, sid: StreamId) -> Item:
    kind = KINDS[entry["kind"]]
    frame = sse.event_bytes(entry["id"], entry_json_bytes(entry), "end" if kind == KIND_END else None)
    return (sid, frame, entry["step"], entry["worker"], LEVELS[entry["level"]], kind)


@dataclass(frozen=True, slots=True)
class Filter:
    """Which entries a client wants; the end entry always passes (it ends the stream)."""

    step: str | None = None
    worker: str | None = None
    min_level: int = 0
    kinds: frozenset[int] | None = None

    @property
    def active(self) -> bool:
        return self != _NO_FILTER

    def passes(self, item: Item) -> bool:
        if item[KIND] == KIND_END:
            return True
        if item[KIND] == KIND_CORRUPT:
            return False
        return (
            (self.step is None or item[STEP] == self.step)
            and (self.worker is None or item[WORKER] == self.worker)
            and item[LEVEL] >= self.min_level
            and (self.kinds is None or item[KIND] in self.kinds)
        )


_NO_FILTER = Filter()
_SHARED_MAX = 64  # distinct cursors whose next write a feed keeps between two appends


class Frames(NamedTuple):
    blob: bytes
    cursor: StreamId | None  # the last entry covered (sent or filtered out)
    ended: bool
    events: int  # events in ``blob``


def frames(items: Sequence[Item], flt: Filter, max_bytes: int = 1 << 62) -> Frames:
    """The bytes for a run of items: one write, many events.

    At most about ``max_bytes`` per write (the rest goes in the next one), so a slow client never
    holds more than one such blob. Filtered-out items cost nothing except, when the run ends
    with them, one id-only event so that the client's Last-Event-ID still moves past them.
    """
    if not flt.active:
        return _unfiltered(items, max_bytes)
    parts: list[bytes] = []
    size = 0
    cursor: StreamId | None = None
    skipped = False
    for item in items:
        if size >= max_bytes:
            break
        cursor = item[SID]
        if flt.passes(item):
            parts.append(item[FRAME])
            size += len(item[FRAME])
            skipped = False
            if item[KIND] == KIND_END:
                return Frames(b"".join(parts), cursor, True, len(parts))
        else:
            skipped = True
    count = len(parts)
    if skipped and cursor is not None:
        parts.append(sse.id_only(format_id(cursor)))
    return Frames(b"".join(parts), cursor, False, count)


def _unfiltered(items: Sequence[Item], max_bytes: int) -> Frames:
    """The common case, kept lean: it runs per client per write."""
    n = size = corrupt = 0
    for item in items:
        n += 1
        size += len(item[FRAME])
        if item[KIND] < 0:
            corrupt += 1  # its frame is id-only: it moves the cursor, it is not an event
        elif item[KIND] == KIND_END or size >= max_bytes:
            break
    chunk = items[:n]
    if not chunk:
        return Frames(b"", None, False, 0)
    return Frames(
        b"".join([i[FRAME] for i in chunk]), chunk[-1][SID], chunk[-1][KIND] == KIND_END, n - corrupt
    )


class Shared:
    """The bytes of one write that every client at the same cursor gets, built once (not once
    per client), in both framings a response can have."""

    __slots__ = ("_chunked", "blob", "cursor", "ended", "events")

    def __init__(self, blob: bytes, cursor: StreamId | None, ended: bool, events: int) -> None:
        self.blob = blob
        self.cursor = cursor  # the last entry covered
        self.ended = ended
        self.events = events
        self._chunked: bytes | None = None

    @property
    def chunked(self) -> bytes:
        """The same bytes as one HTTP/1.1 chunk (``Transfer-Encoding: chunked``)."""
        if self._chunked is None:
            self._chunked = b"%x\r\n%b\r\n" % (len(self.blob), self.blob)
        return self._chunked


class Batch(Shared):
    """What one read appended, for the clients parked at the feed's previous last entry."""

    __slots__ = ("after",)

    def __init__(self, after: StreamId, items: Sequence[Item]) -> None:
        blob = b"".join([i[FRAME] for i in items])
        super().__init__(
            blob, items[-1][SID], items[-1][KIND] == KIND_END, sum(1 for i in items if i[KIND] >= 0)
        )
        self.after = after  # the cursor a client must be at for this batch to follow on


class Listener(Protocol):
    """A subscriber as the feed sees it. A ``parked`` one is idle at the feed's last entry with
    nothing of its own pending: the feed writes a small batch to it directly (``push``), which
    saves waking its task, building its bytes and a write of its own for every read."""

    parked: bool

    def wake(self) -> None: ...

    def push(self, batch: Batch) -> None: ...


class Pages:
    """Pages read from Redis for clients behind the ring, kept decoded for the job's other lagging
    clients: they tend to cover the same ranges, and decoding and encoding a paged entry costs
    far more than sending it. A page read after cursor ``after`` holds every entry up to its
    last one, so it serves any cursor in between. Bounded in bytes; the oldest page goes first."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
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
                return items[bisect_right(items, cursor, key=_sid) :]
        return None

    def keep(self, after: StreamId, items: list[Item]) -> None:
        if not items:
            return
        size = sum(len(i[FRAME]) for i in items)
        self._pages.append((after, items, size))
        self._bytes += size
        while self._bytes > self.max_bytes and len(self._pages) > 1:
            self._bytes -= self._pages.popleft()[2]


def _sid(item: Item) -> StreamId:
    return item[SID]


class JobFeed:
    """Recent frames of one job, shared by all its subscribers in this process."""

    def __init__(
        self,
        job: str,
        key: str,
        start: StreamId,
        max_entries: int,
        max_bytes: int,
        push_max_bytes: int = 32 * 1024,
    ) -> None:
        self.job = job
        self.key = key
        self.base = start
        self.last = start
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.push_max_bytes = push_max_bytes  # larger appends go through each subscriber's own writes
        self.subscribers = 0
        self._items: list[Item] = []
        self._sids: list[StreamId] = []
        self._head = 0
        self._bytes = 0
        self._listeners: set[Listener] = set()
        self._shared: dict[tuple[StreamId, int], Shared] = {}  # see ``frames_after``
        self.pages = Pages(max_bytes // 2)  # history for lagging clients: half the ring's budget

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
            shared = Shared(*_unfiltered(items, max_bytes))
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


def gap_frame(after: StreamId, first_available: StreamId) -> tuple[bytes, StreamId]:
    """The ``gap`` event, and the cursor it leaves the client at: just before the first available
    entry, so a reconnect neither repeats the gap nor skips that entry."""
    data = {"after": format_id(after), "first_available": format_id(first_available), "reason": "trimmed"}
    cursor = predecessor(first_available)
    return sse.event(format_id(cursor), json.dumps(data), "gap"), cursor


def predecessor(sid: StreamId) -> StreamId:
    ms, seq = sid
    return (ms, seq - 1) if seq else (ms - 1, 2**64 - 1)
