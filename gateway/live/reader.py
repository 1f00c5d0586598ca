"""One blocking reader per partition, appending to the rings of the partition's watched jobs.

Per gateway process, a partition with watched jobs has exactly one ``XREAD BLOCK`` in flight,
over the streams of those jobs, on a connection of its own. A new job joins by waking that read
(``CLIENT UNBLOCK``), so live entries of a new subscription are not held back for a whole block
period. Read errors (Redis down, paused, failing over) are retried with backoff; the subscribers
keep their cursors and their connections meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import suppress
from typing import Any

import redis
import redis.asyncio

from broker.constants import META_FIRST_ID
from broker.delivery import Backoff, call_async

from ..ids import format_id, from_redis
from ..metrics import Metrics
from ..settings import GatewaySettings
from .ring import Ring

log = logging.getLogger(__name__)

# (reader, control): a connection that blocks, and one to the same node that can wake it
Connect = Callable[[], Awaitable[tuple[redis.asyncio.Redis, redis.asyncio.Redis]]]


class PartitionReader:
    def __init__(self, partition: int, connect: Connect, settings: GatewaySettings, metrics: Metrics) -> None:
        self.partition = partition
        self.rings: dict[str, Ring] = {}  # by stream key
        self.generation = 0  # bumped when the set of rings changes
        self.seen = 0  # the generation the in-flight XREAD was built from
        self.healthy = True
        self._connect = connect
        self._settings = settings
        self._metrics = metrics
        self._wake = asyncio.Event()
        self._client: redis.asyncio.Redis | None = None
        self._control: redis.asyncio.Redis | None = None  # same node, for CLIENT UNBLOCK
        self._client_id: int | None = None
        self._closing = False
        self._interrupts: set[asyncio.Task[None]] = set()
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"logbroker-reader-p{partition}"
        )

    def add(self, ring: Ring) -> None:
        self.rings[ring.key] = ring
        self._changed()

    def remove(self, ring: Ring) -> None:
        if self.rings.get(ring.key) is ring:
            del self.rings[ring.key]
            self._changed()

    def _changed(self) -> None:
        self.generation += 1
        self._wake.set()
        self._spawn(self._interrupt(self.generation))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._interrupts.add(task)
        task.add_done_callback(self._interrupts.discard)

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
            self._client, self._control = await self._connect()
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
        s = self._settings
        while not self._closing:
            if not self.rings:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                if backoff.failures:
                    await self._check_incarnations()
                read = await self._read_once()
                backoff.reset()
                self.healthy = True
                if 0 < read < s.read_count and s.read_linger_ms:
                    await asyncio.sleep(s.read_linger_ms / 1000)
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

    async def _check_incarnations(self) -> None:
        """After a read error, before reading again: a Redis that came back may have come back
        without its data, and the entries written since would carry on from the rings' cursors
        with their line numbers starting over. A job whose first entry ever (its meta) is not the
        one a ring holds is a new incarnation: the ring is reset and its clients are told."""
        client = await self._connection()
        rings = list(self.rings.values())
        pipe = client.pipeline(transaction=False)  # one slot: a partition's keys share its hash tag
        for ring in rings:
            pipe.hget(ring.meta_key, META_FIRST_ID)
        for ring, raw in zip(rings, await pipe.execute(), strict=True):
            first = from_redis(raw) if raw is not None else None
            if ring.first_id is None:
                continue  # the ring has no entry yet: its first append says which incarnation it is
            if first != ring.first_id:
                log.warning(
                    "reader p%d: job %s has lost its data (first entry %s, now %s): its clients are reset",
                    self.partition, ring.job, format_id(ring.first_id), format_id(first) if first else "none",
                )  # fmt: skip
                ring.reset(first)

    async def _read_once(self) -> int:
        """One XREAD over the partition's streams; returns the largest number of entries any one
        stream got (``read_count`` means that stream has more waiting: read again at once)."""
        client = await self._connection()
        if self._client_id is None:
            self._client_id = int(await call_async(client, "CLIENT", "ID"))
        self.seen = self.generation
        streams = {key: format_id(ring.last) for key, ring in self.rings.items()}
        s = self._settings
        started = time.perf_counter()
        reply: Any = await client.xread(streams, count=s.read_count, block=s.read_block_ms)  # type: ignore[arg-type]
        self._metrics.redis_read_seconds.observe(time.perf_counter() - started)
        most = 0
        for raw_key, entries in reply or []:
            most = max(most, len(entries))
            ring = self.rings.get(raw_key.decode() if isinstance(raw_key, bytes) else raw_key)
            if ring is not None:
                self._metrics.entries_read.inc(ring.append(entries))
        return most

    async def aclose(self) -> None:
        """Unblock the read rather than cancel it: a cancelled blocking read inside redis-py can
        hang on its socket, while an unblocked one returns at once and the loop sees we close."""
        self._closing = True
        self._wake.set()
        for task in list(self._interrupts):
            task.cancel()
        if self._client_id is None:  # not inside a blocking read: a plain cancel is enough
            self._task.cancel()
        else:
            await self._unblock()
        done, _ = await asyncio.wait([self._task], timeout=2)
        if not done:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=2)
        if self._interrupts:
            await asyncio.wait(list(self._interrupts))
        await self._disconnect()
