"""One blocking reader per partition, fanning out to every subscriber of every job (DESIGN §6).

Per gateway process, a partition with live subscribers has exactly one ``XREAD BLOCK`` in flight,
over the streams of its subscribed jobs, on a connection of its own. A new job joins by waking
that read (``CLIENT UNBLOCK``), so live entries of a new subscription are not held back for a
whole block period. Read errors (Redis down, paused, failing over) are retried with backoff; the
subscribers keep their cursors and their connections meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import redis
import redis.asyncio

from broker.delivery import Backoff, call_async
from broker.keys import Keyspace

from .connections import AnyRedis, Connector
from .feed import JobFeed
from .ids import ZERO, StreamId, format_id, from_redis
from .metrics import Metrics
from .streams import xrevrange

log = logging.getLogger(__name__)
_FEED_LINGER_S = 5.0  # keep an unsubscribed feed (and its ring) this long: reconnects reuse it


class PartitionReader:
    def __init__(self, fanout: Fanout, partition: int) -> None:
        self.fanout = fanout
        self.partition = partition
        self.feeds: dict[str, JobFeed] = {}
        self.generation = 0  # bumped when the set of feeds changes
        self.seen = 0  # the generation the in-flight XREAD was built from
        self.healthy = True
        self._wake = asyncio.Event()
        self._client: redis.asyncio.Redis | None = None
        self._control: redis.asyncio.Redis | None = None  # same node, for CLIENT UNBLOCK
        self._client_id: int | None = None
        self._closing = False
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"logbroker-reader-p{partition}"
        )

    def add(self, feed: JobFeed) -> None:
        self.feeds[feed.key] = feed
        self._changed()

    def remove(self, feed: JobFeed) -> None:
        if self.feeds.get(feed.key) is feed:
            del self.feeds[feed.key]
            self._changed()

    def _changed(self) -> None:
        self.generation += 1
        self._wake.set()
        self.fanout.spawn(self._interrupt(self.generation))

    async def _interrupt(self, generation: int) -> None:
        """Wake the blocked XREAD until it has been re-issued with the new set of streams."""
        for _ in range(200):
            if self.seen >= generation or self._client_id is None:
                return
            await self._unblock()
            await asyncio.sleep(0.01)

    async def _unblock(self) -> None:
        if self._control is not None and self._client_id is not None:
            with suppress(redis.RedisError, OSError):
                await call_async(self._control, "CLIENT", "UNBLOCK", self._client_id)

    async def _connection(self) -> redis.asyncio.Redis:
        if self._client is None:
            slot_key = self.fanout.keyspace.index(self.partition)
            self._client, self._control = await self.fanout.connector.reader(self.fanout.redis, slot_key)
        return self._client

    async def _disconnect(self) -> None:
        """After an error: the next read reconnects, to whichever node owns the slot by then."""
        self._client_id = None
        for client in (self._client, self._control):
            if client is not None:
                with suppress(redis.RedisError, OSError):
                    await client.aclose(close_connection_pool=True)  # our pools, even when wrapped
        self._client = self._control = None

    async def _run(self) -> None:
        backoff = Backoff(50, 2000)
        while not self._closing:
            if not self.feeds:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                read = await self._read_once()
                backoff.reset()
                self.healthy = True
                if 0 < read < self.fanout.settings.read_count and self.fanout.settings.read_linger_ms:
                    await asyncio.sleep(self.fanout.settings.read_linger_ms / 1000)
            except Exception as e:  # Redis away, failing over, or a bug: never let the reader die
                if self._closing:
                    return
                if not isinstance(e, redis.RedisError | OSError):
                    log.exception("reader p%d: unexpected error", self.partition)
                self.healthy = False
                await self._disconnect()
                delay = backoff.next_delay_s()
                if backoff.failures in (1, 10) or backoff.failures % 100 == 0:
                    log.warning("reader p%d: %s; retrying in %.2fs", self.partition, e, delay)
                await asyncio.sleep(delay)

    async def _read_once(self) -> int:
        """One XREAD over the partition's streams; returns the largest number of entries any one
        stream got (``read_count`` means that stream has more waiting: read again at once)."""
        client = await self._connection()
        if self._client_id is None:
            self._client_id = int(await call_async(client, "CLIENT", "ID"))
        self.seen = self.generation
        streams = {key: format_id(feed.last) for key, feed in self.feeds.items()}
        s = self.fanout.settings
        started = time.perf_counter()
        reply: Any = await client.xread(streams, count=s.read_count, block=s.read_block_ms)  # type: ignore[arg-type]
        self.fanout.metrics.redis_read_seconds.observe(time.perf_counter() - started)
        most = 0
        for raw_key, entries in reply or []:
            most = max(most, len(entries))
            feed = self.feeds.get(raw_key.decode() if isinstance(raw_key, bytes) else raw_key)
            if feed is not None:
                self.fanout.metrics.entries_read.inc(feed.append(entries))
        return most

    async def aclose(self) -> None:
        """Unblock the read rather than cancel it: a cancelled blocking read inside redis-py can
        hang on its socket, while an unblocked one returns at once and the loop sees we close."""
        self._closing = True
        self._wake.set()
        if self._client_id is None:  # not inside a blocking read: a plain cancel is enough
            self._task.cancel()
        else:
            await self._unblock()
        done, _ = await asyncio.wait([self._task], timeout=2)
        if not done:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=2)
        await self._disconnect()


class Fanout:
    """Owns the partition readers and the feeds; ``subscribe(job)`` is the only way in."""

    def __init__(self, client: AnyRedis, connector: Connector, settings: Any, metrics: Metrics) -> None:
        self.redis = client
        self.connector = connector
        self.settings = settings
        self.metrics = metrics
        self.keyspace: Keyspace = settings.keyspace
        self._feeds: dict[str, JobFeed] = {}
        self._readers: dict[int, PartitionReader] = {}
        self._creating: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def healthy(self) -> bool:
        return all(r.healthy for r in self._readers.values())

    @property
    def feeds(self) -> dict[str, JobFeed]:
        return self._feeds

    @asynccontextmanager
    async def subscribe(self, job: str) -> AsyncIterator[JobFeed]:
        feed = await self._feed(job)
        feed.subscribers += 1
        try:
            yield feed
        finally:
            feed.subscribers -= 1
            if feed.subscribers == 0:
                self.spawn(self._retire(feed))

    async def _feed(self, job: str) -> JobFeed:
        feed = self._feeds.get(job)
        if feed is not None:
            return feed
        lock = self._creating.setdefault(job, asyncio.Lock())
        async with lock:
            feed = self._feeds.get(job)
            if feed is None:
                key = self.keyspace.stream(job)
                s = self.settings
                feed = JobFeed(
                    job, key, await self.last_id(key), s.ring_entries, s.ring_bytes, 2 * s.write_chunk_bytes
                )
                self._feeds[job] = feed
                self._reader(self.keyspace.partition(job)).add(feed)
        self._creating.pop(job, None)
        return feed

    async def last_id(self, key: str) -> StreamId:
        newest = await xrevrange(self.redis, key, count=1)
        return from_redis(newest[0][0]) if newest else ZERO

    def _reader(self, partition: int) -> PartitionReader:
        reader = self._readers.get(partition)
        if reader is None:
            reader = self._readers[partition] = PartitionReader(self, partition)
        return reader

    async def _retire(self, feed: JobFeed) -> None:
        await asyncio.sleep(_FEED_LINGER_S)
        if feed.subscribers == 0 and self._feeds.get(feed.job) is feed:
            del self._feeds[feed.job]
            self._readers[self.keyspace.partition(feed.job)].remove(feed)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        for reader in self._readers.values():
            await reader.aclose()
