"""Typed reads of job streams and meta (redis-py types stream replies loosely)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from broker.constants import META_FIRST_ID
from broker.keys import Keyspace

from .ids import ZERO, StreamId, from_redis, predecessor
from .redis_clients import AnyRedis

RawEntry = tuple[bytes, dict[bytes, bytes]]
# A filtered read (replay, a ``tail=N`` start) looks at most this many pages of ``page_entries``
# per request, however sparse its filter: bounded work, then it says where it got to
MAX_SCAN_PAGES = 20


async def xrange(
    client: AnyRedis, key: str, lo: str = "-", hi: str = "+", count: int | None = None
) -> list[RawEntry]:
    """Entries with ``lo <= id <= hi`` (``(`` before an id makes that end exclusive), oldest first."""
    return cast(list[RawEntry], await client.xrange(key, min=lo, max=hi, count=count))


async def xrevrange(
    client: AnyRedis, key: str, hi: str = "+", lo: str = "-", count: int | None = None
) -> list[RawEntry]:
    """Entries with ``lo <= id <= hi``, newest first."""
    return cast(list[RawEntry], await client.xrevrange(key, max=hi, min=lo, count=count))


async def last_id(client: AnyRedis, key: str) -> StreamId:
    """The newest entry's id, ``ZERO`` for an empty or missing stream."""
    newest = await xrevrange(client, key, count=1)
    return from_redis(newest[0][0]) if newest else ZERO


async def last_and_first_id(
    client: AnyRedis, stream_key: str, meta_key: str
) -> tuple[StreamId, StreamId | None]:
    """The newest entry's id (``ZERO`` for none) and the job's first entry ever (``None`` for no
    job), in one round trip: where a ring starts, and which incarnation of the job it holds."""
    pipe = client.pipeline(transaction=False)
    pipe.xrevrange(stream_key, count=1)
    pipe.hget(meta_key, META_FIRST_ID)
    newest, raw_first = cast(tuple[list[RawEntry], bytes | None], await pipe.execute())
    return (from_redis(newest[0][0]) if newest else ZERO), (from_redis(raw_first) if raw_first else None)


@dataclass(frozen=True, slots=True)
class Standing:
    """Where a client's cursor stands against what is stored (docs/design.md §5, gap and reset)."""

    trimmed_to: StreamId | None  # retention removed entries after the cursor: the first available
    lost: bool  # the cursor is older than the job's first entry ever: the data it came from is gone
    first_ever: StreamId | None  # the job's first entry (meta), None when the job does not exist


def cursor_lost(cursor: StreamId, first_ever: StreamId | None) -> bool:
    """A cursor before the job's first entry ever names an entry this job never had: its data was
    lost (Redis restarted empty, or the job expired) and the job was written again. A legitimate
    cursor is an entry's id, or just before one; ``0-<n>`` (no entry has time 0) is a start."""
    return first_ever is not None and cursor[0] > 0 and cursor < predecessor(first_ever)


async def standing(client: AnyRedis, keyspace: Keyspace, job: str, cursor: StreamId) -> Standing:
    """One round trip (the stream's oldest entry and the meta's first id share the job's slot).

    Something was trimmed when the job's first entry ever is older than the oldest entry still in
    the stream; the client missed some when its cursor is older too. A lost cursor is answered
    from the job's start, so its gap is measured from there.
    """
    key, meta_key = keyspace.job_keys(job)[:2]
    pipe = client.pipeline(transaction=False)
    pipe.xrange(key, count=1)
    pipe.hget(meta_key, META_FIRST_ID)
    oldest, raw_first = cast(tuple[list[RawEntry], bytes | None], await pipe.execute())
    first_ever = from_redis(raw_first) if raw_first is not None else None
    lost = cursor_lost(cursor, first_ever)
    start = ZERO if lost else cursor
    if not oldest or first_ever is None:
        return Standing(None, lost, first_ever)
    first_retained = from_redis(oldest[0][0])
    if start >= predecessor(first_retained) or first_ever >= first_retained:
        return Standing(None, lost, first_ever)  # a gap event leaves a client just before it
    return Standing(first_retained, lost, first_ever)
