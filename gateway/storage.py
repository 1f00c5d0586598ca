"""Typed reads of job streams and meta (redis-py types stream replies loosely)."""

from __future__ import annotations

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


async def trimmed_since(client: AnyRedis, keyspace: Keyspace, job: str, cursor: StreamId) -> StreamId | None:
    """The first available entry when entries after ``cursor`` were trimmed away, else ``None``.

    Something was trimmed when the job's first entry ever (kept in its meta) is older than the
    oldest entry still in the stream; the client missed some when its cursor is older too.
    """
    key, meta_key = keyspace.job_keys(job)[:2]
    pipe = client.pipeline(transaction=False)  # one round trip: both keys share the job's slot
    pipe.xrange(key, count=1)
    pipe.hget(meta_key, META_FIRST_ID)
    oldest, first_ever = cast(tuple[list[RawEntry], bytes | None], await pipe.execute())
    if not oldest:
        return None
    first_retained = from_redis(oldest[0][0])
    if cursor >= predecessor(first_retained):  # where a gap event leaves a client: nothing missed
        return None
    if first_ever is None or from_redis(first_ever) >= first_retained:
        return None
    return first_retained
