"""Typed reads of job streams (redis-py types stream replies loosely)."""

from __future__ import annotations

from typing import cast

from .connections import AnyRedis

RawEntry = tuple[bytes, dict[bytes, bytes]]


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
