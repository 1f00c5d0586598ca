"""One SSE client: a cursor and a writer (DESIGN §6).

While caught up, a subscriber takes every frame after its cursor from the job's ring and sends
them in one ``write()``, then awaits the transport's drain: the client's reading speed paces it,
never a buffer that can fill. Behind the ring, it pages from Redis with ``XRANGE`` at its own pace
and rejoins the ring once caught up. A client that stops reading without closing is detected by
the write timeout and its connection is closed; memory per client stays one page at most.
"""

from __future__ import annotations

import asyncio
import logging
import time

import redis
from aiohttp import web

from . import sse
from .context import Gateway
from .feed import Filter, Item, JobFeed, frames, gap_frame, make_item, predecessor
from .ids import StreamId, format_id, from_redis
from .streams import xrange

log = logging.getLogger(__name__)


class ClientGone(Exception):
    """The client disconnected, or stopped reading for longer than the write timeout."""


class Subscriber:
    """Costs per write are kept off the hot path: the feed wakes each subscriber through its own
    event, a watchdog (not a timer per write) reaps clients stuck in a write, and metrics are
    added in batches."""

    def __init__(
        self,
        gw: Gateway,
        request: web.Request,
        resp: web.StreamResponse,
        feed: JobFeed,
        flt: Filter,
        cursor: StreamId,
    ) -> None:
        self.gw = gw
        self.request = request
        self.resp = resp
        self.feed = feed
        self.filter = flt
        self.cursor = cursor
        self.sent = 0
        self.writing_since: float | None = None  # loop time a pending write started (watchdog)
        self._stopped = False
        self._wake = asyncio.Event()
        self._unreported = [0, 0, 0]  # entries, bytes, writes not yet added to the metrics
        self._backlog: list[Item] = []  # the rest of a page read from Redis, not yet sent

    def stop(self) -> None:
        """Graceful shutdown: the stream ends cleanly and the client reconnects elsewhere."""
        self._stopped = True
        self._wake.set()

    def reap(self) -> None:
        """Called by the watchdog: the client has not taken a write for ``write_timeout_s``."""
        self.gw.metrics.reaped.inc()
        log.info(
            "closing SSE client of %s: no progress in %ss", self.feed.job, self.gw.settings.write_timeout_s
        )
        if self.request.transport is not None:
            self.request.transport.abort()

    async def run(self) -> None:
        self.feed.listen(self._wake)
        try:
            while not self._stopped:
                self._wake.clear()  # before looking: an append after this wakes us
                paged = bool(self._backlog)
                items = self._backlog or self.feed.after(self.cursor)
                if items is None:
                    items, paged = await self._page(), True
                if not items:
                    await self._idle()
                    continue
                if await self._send(items, paged):
                    return
        except ClientGone:
            return
        finally:
            self.feed.unlisten(self._wake)
            self.report()

    async def _idle(self) -> None:
        self.report()
        try:
            async with asyncio.timeout(self.gw.settings.heartbeat_s):
                await self._wake.wait()
        except TimeoutError:
            await self.write(sse.comment("heartbeat"), None)

    async def _page(self) -> list[Item]:
        """Entries after the cursor straight from Redis, for a client behind the ring."""
        gw = self.gw
        gw.metrics.pages.inc()
        try:
            raw = await xrange(
                gw.redis, self.feed.key, "(" + format_id(self.cursor), count=gw.settings.page_entries
            )
            first_available = await trimmed_since(gw, self.feed.job, self.cursor)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
            # Redis away: keep the client (heartbeats continue while idle) and try again later
            log.info("paging %s from Redis failed (%s); the client waits", self.feed.job, type(e).__name__)
            await asyncio.sleep(0.5)
            return []
        if first_available is not None:
            frame, self.cursor = gap_frame(self.cursor, first_available)
            await self.write(frame, None)
        if not raw:  # everything between the cursor and the ring was trimmed
            return self.feed.after(self.feed.base) or []
        return [make_item(self.feed.job, i, f) for i, f in raw]

    async def _send(self, items: list[Item], paged: bool = False) -> bool:
        """Write what is due in one go; True once the end event is out. What a write chunk could
        not take of a page from Redis is kept for the next write, never read and decoded twice."""
        blob, cursor, ended, count = frames(items, self.filter, self.gw.settings.write_chunk_bytes)
        rest = _after(items, cursor) if paged and cursor is not None else []
        del items  # only the blob (and a page's rest), not the ring slice, waits on a slow client
        self._backlog = []
        await self.write(blob, cursor, count)
        self._backlog = rest
        return ended

    async def write(self, blob: bytes, cursor: StreamId | None, count: int = 0) -> None:
        """Write, then wait until the transport has drained below its limit (``write_buffer_bytes``):
        the client's reading speed sets the pace, and a slow client holds one chunk at most."""
        if not blob:
            return
        size = len(blob)
        self.writing_since = asyncio.get_running_loop().time()
        try:
            await self.resp.write(blob)
            del blob  # the transport has its own copy; do not hold a second one while waiting
            await self._drain()
        except (ConnectionError, RuntimeError) as e:  # reset by peer, reaped, or transport closed
            raise ClientGone from e
        finally:
            self.writing_since = None
        pending = self._unreported
        pending[1] += size
        if cursor is not None:
            pending[0] += count
            self.sent += count
            self.cursor = cursor
        pending[2] += 1
        if pending[2] >= 64:
            self.report()

    def report(self) -> None:
        """Add what was sent since the last report to the metrics (with one lag sample)."""
        entries, size, writes = self._unreported
        if not writes:
            return
        metrics = self.gw.metrics
        metrics.entries_sent.inc(entries)
        metrics.bytes_sent.inc(size)
        metrics.client_lag.observe(max(0.0, time.time() - self.cursor[0] / 1000))
        self._unreported = [0, 0, 0]

    async def _drain(self) -> None:
        # aiohttp's own write() only drains past 64 KiB of its counter; ask the writer directly
        writer = self.resp._payload_writer
        if writer is not None:
            await writer.drain()


def _after(items: list[Item], cursor: StreamId) -> list[Item]:
    k = 0
    while k < len(items) and items[k].sid <= cursor:
        k += 1
    return items[k:]


async def watchdog(gw: Gateway) -> None:
    """Reap clients stuck in one write for longer than the write timeout (half-open connections),
    checking a few times per timeout instead of arming a timer for every write."""
    timeout = gw.settings.write_timeout_s
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(min(1.0, timeout / 4))
        now = loop.time()
        for sub in list(gw.subscribers):
            started = sub.writing_since
            if started is not None and now - started > timeout:
                sub.writing_since = None
                sub.reap()


async def trimmed_since(gw: Gateway, job: str, cursor: StreamId) -> StreamId | None:
    """The first available entry when entries after ``cursor`` were trimmed away, else ``None``.

    Something was trimmed when the job's first entry ever (kept in its meta) is older than the
    oldest entry still in the stream; the client missed some when its cursor is older too.
    """
    key, meta_key, _ = gw.keyspace.job_keys(job)
    oldest = await xrange(gw.redis, key, count=1)
    if not oldest:
        return None
    first_retained = from_redis(oldest[0][0])
    if cursor >= predecessor(first_retained):  # where a gap event leaves a client: nothing missed
        return None
    first_ever = await gw.redis.hget(meta_key, "first_id")
    if first_ever is None or from_redis(first_ever) >= first_retained:
        return None
    return first_retained
