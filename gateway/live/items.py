"""A stored entry as the live engine holds it: decoded once, its SSE frame encoded once."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Final

from broker.codec import decode_entry
from broker.constants import KIND_END, KINDS, LEVELS
from broker.entry import Entry
from broker.errors import CodecError

from ..entry_json import entry_json_bytes
from ..ids import StreamId, from_redis
from . import sse

log = logging.getLogger(__name__)
KIND_CORRUPT: Final = -1

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


def bare_item(job: str, raw_id: bytes, fields: Mapping[bytes, bytes]) -> Item:
    """What a filter reads of a stored entry, without its frame: a scan that only looks for where
    to start need not encode what it looks at."""
    entry_id = raw_id.decode()
    sid = from_redis(entry_id)
    try:
        entry = decode_entry(job, entry_id, fields)
    except CodecError:
        return (sid, b"", None, None, 0, KIND_CORRUPT)  # the page that sends it logs it
    return (sid, b"", entry["step"], entry["worker"], LEVELS[entry["level"]], KINDS[entry["kind"]])


def item_of(entry: Entry, sid: StreamId) -> Item:
    kind = KINDS[entry["kind"]]
    frame = sse.event_bytes(entry["id"], entry_json_bytes(entry), "end" if kind == KIND_END else None)
    return (sid, frame, entry["step"], entry["worker"], LEVELS[entry["level"]], kind)


def sid_of(item: Item) -> StreamId:
    return item[SID]


def after(items: list[Item], cursor: StreamId) -> list[Item]:
    """The items of ``items`` (in id order) that come after ``cursor``."""
    k = 0
    while k < len(items) and items[k][SID] <= cursor:
        k += 1
    return items[k:]
