"""The hub: the one owner of a gateway's live subscriptions, readers and rings (docs/design.md §6).

``subscribe(job, filter, cursor)`` is the only way in, an async context manager in the pattern of
encode/broadcaster's ``Broadcast.subscribe``: it refuses a client beyond ``max_clients``, registers
the subscriber (the client count, the clients gauge, /readyz and the watchdog all read that one
set) and
unregisters it in ``finally``, whatever ended the stream. The job's ring is held meanwhile and
kept a few seconds after its last subscriber left, so a reconnect finds it warm. ``close_streams``
ends every stream and waits until their handlers are done.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio

from broker.keys import Keyspace

from ..errors import ApiError
from ..ids import StreamId
from ..metrics import Metrics
from ..redis_clients import AnyRedis, Connector
from ..settings import GatewaySettings
from ..storage import last_and_first_id
from .budget import PageBudget
from .filter import Filter
from .reader import PartitionReader
from .ring import Ring
from .subscriber import Subscriber

log = logging.getLogger(__name__)
RING_LINGER_S = 5.0  # keep a ring nobody holds this long: reconnects reuse it
CLIENT_LIMIT_RETRY_AFTER_S = 5
STOP_GRACE_S = 1.0  # at shutdown, how long a stopped stream may take to end cleanly


class Hub:
    def __init__(
        self, client: AnyRedis, connector: Connector, settings: GatewaySettings, metrics: Metrics
    ) -> None:
        self.redis = client
        self.settings = settings
        self.metrics = metrics
        self.keyspace: Keyspace = settings.keyspace
        self._connector = connector
        self._subscribers: set[Subscriber] = set()
        metrics.clients.set_function(lambda: len(self._subscribers))  # read from the set, not kept apart
        self._none_left = asyncio.Event()
        self._none_left.set()
        self._rings: dict[str, Ring] = {}
        self._readers: dict[int, PartitionReader] = {}
        self._creating: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._watchdog: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Hub:
        self._watchdog = asyncio.get_running_loop().create_task(self._watch(), name="logbroker-watchdog")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def subscribers(self) -> frozenset[Subscriber]:
        return frozenset(self._subscribers)

    @property
    def clients(self) -> int:
        return len(self._subscribers)

    @property
    def rings(self) -> dict[str, Ring]:
        """The rings of the jobs watched in this process, by job (read-only use)."""
        return self._rings

    @property
    def healthy(self) -> bool:
        return all(r.healthy for r in self._readers.values())

    def check_capacity(self) -> None:
        """503 ``too_many_clients`` when one more client would pass ``max_clients``."""
        if len(self._subscribers) >= self.settings.max_clients:
            raise ApiError(
                503,
                "too_many_clients",
                "this gateway is at its client limit",
                {"Retry-After": str(CLIENT_LIMIT_RETRY_AFTER_S)},
            )

    @asynccontextmanager
    async def subscribe(self, job: str, flt: Filter, cursor: StreamId) -> AsyncIterator[Subscriber]:
        """A registered subscriber of ``job`` starting after ``cursor``; see the module docstring."""
        self.check_capacity()
        async with self.ring(job) as ring:
            self.check_capacity()  # again: others may have joined while the ring was read
            sub = Subscriber(
                ring, flt, cursor, redis=self.redis, keyspace=self.keyspace, settings=self.settings,
                metrics=self.metrics,
            )  # fmt: skip
            self._subscribers.add(sub)
            self._none_left.clear()
            try:
                yield sub
            finally:
                sub.report()
                self._subscribers.discard(sub)
                if not self._subscribers:
                    self._none_left.set()

    @asynccontextmanager
    async def ring(self, job: str) -> AsyncIterator[Ring]:
        """The job's ring, fed by its partition's reader while held."""
        ring = await self._ring(job)
        ring.holders += 1
        try:
            yield ring
        finally:
            ring.holders -= 1
            if ring.holders == 0:
                self._spawn(self._retire(ring))

    async def _ring(self, job: str) -> Ring:
        ring = self._rings.get(job)
        if ring is not None:
            return ring
        lock = self._creating.setdefault(job, asyncio.Lock())
        async with lock:
            ring = self._rings.get(job)
            if ring is None:
                key, meta_key = self.keyspace.job_keys(job)[:2]
                s = self.settings
                start, first_id = await last_and_first_id(self.redis, key, meta_key)
                page = PageBudget(s.page_max_bytes, s.page_entries)
                ring = Ring(
                    job, key, start, s.ring_entries, s.ring_bytes, 2 * s.write_chunk_bytes,
                    page=page, first_id=first_id, meta_key=meta_key,
                )  # fmt: skip
                self._rings[job] = ring
                self._reader(self.keyspace.partition(job)).add(ring)
        self._creating.pop(job, None)
        return ring

    def _reader(self, partition: int) -> PartitionReader:
        reader = self._readers.get(partition)
        if reader is None:
            slot_key = self.keyspace.index(partition)

            async def connect() -> tuple[redis.asyncio.Redis, redis.asyncio.Redis]:
                return await self._connector.reader(self.redis, slot_key)

            reader = self._readers[partition] = PartitionReader(
                partition, connect, self.settings, self.metrics
            )
        return reader

    async def _retire(self, ring: Ring) -> None:
        await asyncio.sleep(RING_LINGER_S)
        if ring.holders == 0 and self._rings.get(ring.job) is ring:
            del self._rings[ring.job]
            self._readers[self.keyspace.partition(ring.job)].remove(ring)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(self) -> None:
        """Reap clients stuck in one write for longer than the write timeout (half-open
        connections), checking a few times per timeout instead of arming a timer per write; and
        end the streams whose client has hung up while they were idle. (``serve`` also cancels
        such a handler at once; an application embedding ``create_app`` may not.)"""
        timeout = self.settings.write_timeout_s
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(1.0, timeout / 4))
            now = loop.time()
            for sub in list(self._subscribers):
                started = sub.writing_since
                if started is not None and now - started > timeout:
                    sub.writing_since = None
                    sub.reap()
                elif sub.resp.prepared and sub.resp.closing:
                    sub.stop()

    async def close_streams(self, timeout_s: float) -> None:
        """End every stream cleanly, so clients reconnect (to another gateway) at once, and wait
        until their handlers have finished. A client that does not take its last bytes within
        ``STOP_GRACE_S`` (stuck in a write) has its connection aborted instead; it resumes by its
        Last-Event-ID all the same."""
        for sub in list(self._subscribers):
            sub.stop()
        if await self._until_none_left(min(STOP_GRACE_S, timeout_s)):
            return
        for sub in list(self._subscribers):
            sub.resp.abort()
        if not await self._until_none_left(timeout_s):
            log.warning(
                "%d SSE streams still open after %.1fs of shutdown", len(self._subscribers), timeout_s
            )

    async def _until_none_left(self, timeout_s: float) -> bool:
        try:
            async with asyncio.timeout(timeout_s):
                await self._none_left.wait()
        except TimeoutError:
            return False
        return True

    async def aclose(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            await asyncio.wait([self._watchdog])
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        for reader in self._readers.values():
            await reader.aclose()
