"""The bytes of one write to a client: many events per write, built once where clients share them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import NamedTuple

from broker.constants import KIND_END

from ..ids import ZERO, StreamId, format_id, predecessor
from . import sse
from .filter import Filter
from .items import FRAME, KIND, SID, Item


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
        return unfiltered(items, max_bytes)
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


def unfiltered(items: Sequence[Item], max_bytes: int) -> Frames:
    """``frames`` without a filter, kept lean: it runs per client per write."""
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

    __slots__ = ("blob", "cursor", "ended", "events", "wire_chunked")

    def __init__(self, blob: bytes, cursor: StreamId | None, ended: bool, events: int) -> None:
        self.blob = blob
        self.cursor = cursor  # the last entry covered
        self.ended = ended
        self.events = events
        self.wire_chunked: bytes | None = (
            None  # ``blob`` as one HTTP chunk, made by the first response that needs it
        )


class Batch(Shared):
    """What one read appended, for the clients parked at the ring's previous last entry."""

    __slots__ = ("after",)

    def __init__(self, after: StreamId, items: Sequence[Item]) -> None:
        blob = b"".join([i[FRAME] for i in items])
        super().__init__(
            blob, items[-1][SID], items[-1][KIND] == KIND_END, sum(1 for i in items if i[KIND] >= 0)
        )
        self.after = after  # the cursor a client must be at for this batch to follow on


def reset_data(after: StreamId, first_ever: StreamId | None) -> dict[str, str | None]:
    """What the ``reset`` event says (and replay's ``reset`` object): the client's cursor, the
    job's first entry now (``None`` while it has none), and why."""
    first = format_id(first_ever) if first_ever is not None else None
    return {"after": format_id(after), "first_available": first, "reason": "data_lost"}


def reset_frame(after: StreamId, first_ever: StreamId | None) -> bytes:
    """The ``reset`` event: the entries the client holds are gone from the store and the job starts
    over (line numbers from 1). Its ``id: 0-0`` makes a reconnect start from the job's beginning."""
    return sse.event(format_id(ZERO), json.dumps(reset_data(after, first_ever)), "reset")


def gap_frame(after: StreamId, first_available: StreamId) -> tuple[bytes, StreamId]:
    """The ``gap`` event, and the cursor it leaves the client at: just before the first available
    entry, so a reconnect neither repeats the gap nor skips that entry."""
    data = {"after": format_id(after), "first_available": format_id(first_available), "reason": "trimmed"}
    cursor = predecessor(first_available)
    return sse.event(format_id(cursor), json.dumps(data), "gap"), cursor
