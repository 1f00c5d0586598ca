"""One SSE client: a cursor and a writer (DESIGN §6).

While caught up, a subscriber takes every frame after its cursor from the job's ring and sends
them in one ``write()``, then awaits the transport's drain: the client's reading speed paces it,
never a buffer that can fill. Behind the ring, it pages from Redis with ``XRANGE`` at its own pace
and rejoins the ring once caught up. A client that stops reading without closing is detected by
the write timeout and its connection is closed; memory per client stays one page at most.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import sys
import termios
import time

import redis
from aiohttp import web

from . import sse
from .context import Gateway
from .feed import SID, Batch, Filter, Frames, Item, JobFeed, Shared, frames, gap_frame, make_item, predecessor
from .ids import StreamId, format_id, from_redis
from .streams import xrange

log = logging.getLogger(__name__)
_BACKED_UP_CHUNKS = 8  # this many chunks unread in the kernel: a client that stopped keeping up


class ClientGone(Exception):
    """The client disconnected, or stopped reading for longer than the write timeout."""


class Subscriber:
    """Costs per write are kept off the hot path: while a subscriber is parked (caught up,
    unfiltered, its transport empty) the feed writes each small append to it directly, from bytes
    shared by all such clients; otherwise the feed wakes it through its own event. A watchdog (not
    a timer per write) reaps clients stuck in a write, and metrics are added in batches."""

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
        self._unreported = [0, 0, 0, 0]  # entries, bytes, writes, pushes not yet in the metrics
        self._backlog: list[Item] = []  # the rest of a page read from Redis, not yet sent
        self.parked = False  # see ``push``
        self.pushes = 0
        self._ended = False  # the end event went out in a push
        self._chunked: bool | None = None  # the response's framing, known after its first write
        self._queued_at_most = 0  # the kernel send queue at the last look plus what was written since

    def wake(self) -> None:
        self._wake.set()

    def push(self, batch: Batch) -> None:
        """The feed's direct write while parked. What the socket does not take at once stays in
        the transport (one batch); the subscriber then leaves the park and drains it in its own
        task, where the watchdog sees it. A batch larger than a small write goes to a client
        whose kernel queue is backed up only through its own task, in small writes."""
        transport = self.request.transport
        if self._chunked is None or transport is None or transport.is_closing() or batch.after != self.cursor:
            self._unpark()
            return
        if len(batch.blob) > self.gw.settings.write_buffer_bytes and self._backed_up():
            self._unpark()
            return
        size = self._write_shared(transport, batch)
        self.pushes += 1
        self._unreported[3] += 1
        self._account(size, batch.cursor, batch.events)
        if batch.ended:
            self._ended = True
            self._unpark()
        elif transport.get_write_buffer_size():
            self._unpark()

    def _unpark(self) -> None:
        self.parked = False
        self._wake.set()

    def stop(self) -> None:
        """Graceful shutdown: the stream ends cleanly and the client reconnects elsewhere."""
        self._stopped = True
        self._unpark()

    def reap(self) -> None:
        """Called by the watchdog: the client has not taken a write for ``write_timeout_s``."""
        self.gw.metrics.reaped.inc()
        log.info(
            "closing SSE client of %s: no progress in %ss", self.feed.job, self.gw.settings.write_timeout_s
        )
        if self.request.transport is not None:
            self.request.transport.abort()

    async def run(self) -> None:
        self.feed.listen(self)
        try:
            while not self._stopped and not self._ended:
                self._wake.clear()  # before looking: an append after this wakes us
                await self._settle(0, None)  # what a push left in the transport drains first
                due = await self._due()
                if due is None:
                    await self._idle()
                    continue
                cursor, ended, count = due.cursor, due.ended, due.events
                size = await self._put_due(due)
                del due  # the transport has its copy: a slow client does not hold a second one
                await self._settle(size, cursor, count)
                if ended:
                    return
        except ClientGone:
            return
        finally:
            self.parked = False
            self.feed.unlisten(self)
            self.report()

    async def _put_due(self, due: Frames | Shared) -> int:
        """Bytes shared with other clients go to the transport as they are, already framed;
        the rest through aiohttp."""
        if isinstance(due, Shared) and self._chunked is not None:
            transport = self.request.transport
            if transport is None or transport.is_closing():
                raise ClientGone
            return self._write_shared(transport, due)
        blob = due.blob
        await self._put(blob)
        return len(blob)

    def _write_shared(self, transport: asyncio.WriteTransport, shared: Shared) -> int:
        data = shared.chunked if self._chunked else shared.blob
        transport.write(data)
        return len(data)

    async def _due(self) -> Frames | Shared | None:
        """The next write, or ``None`` when there is nothing to send. What a write chunk could
        not take of a page from Redis is kept for the next write, never read and decoded twice;
        a ring slice is let go before the write waits."""
        if not self._backlog and self.cursor == self.feed.last:
            return None
        limit = self._chunk_bytes()
        if not self._backlog and not self.filter.active:
            shared = self.feed.frames_after(self.cursor, limit)
            if shared is not None:
                return shared if shared.blob else None
        paged = bool(self._backlog)
        items = self._backlog or self.feed.after(self.cursor)
        if items is None:
            items, paged = await self._page(), True
        if not items:
            return None
        due = frames(items, self.filter, limit)
        self._backlog = _after(items, due.cursor) if paged and due.cursor is not None else []
        return due

    async def _idle(self) -> None:
        """Wait for the feed; parked when the feed may write to us directly meanwhile. The
        heartbeat goes out only when nothing else did during the wait."""
        self.report()
        pushes = self.pushes
        self.parked = self._parkable()
        try:
            async with asyncio.timeout(self.gw.settings.heartbeat_s):
                await self._wake.wait()
        except TimeoutError:
            self.parked = False
            if self.pushes == pushes:
                await self.write(sse.comment("heartbeat"), None)
        finally:
            self.parked = False

    def _parkable(self) -> bool:
        transport = self.request.transport
        return (
            self._chunked is not None
            and not self._stopped
            and not self.filter.active
            and not self._backlog
            and self.cursor == self.feed.last
            and transport is not None
            and not transport.get_write_buffer_size()
        )

    async def _page(self) -> list[Item]:
        """Entries after the cursor for a client behind the ring: from a page another lagging
        client of the job had read, else straight from Redis (and kept for the others)."""
        pages = self.feed.pages
        in_flight = pages.reading(self.cursor)
        if in_flight is not None:
            await in_flight.wait()
        kept = pages.after(self.cursor)
        if kept:
            self.gw.metrics.page_hits.inc()
            return kept
        start = self.cursor
        done = pages.begin(start)
        try:
            items, gap = await self._read_page()
        finally:
            pages.end(start, done)  # before writing anything: never make others wait on our client
        if gap:
            await self.write(gap, None)
        return items

    async def _read_page(self) -> tuple[list[Item], bytes]:
        """A page from Redis (kept for the job's other lagging clients) and, when entries after
        the cursor were trimmed, the gap event that moves the cursor past them."""
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
            return [], b""
        gap = b""
        if first_available is not None:
            gap, self.cursor = gap_frame(self.cursor, first_available)
        if not raw:  # everything between the cursor and the ring was trimmed
            return self.feed.after(self.feed.base) or [], gap
        items = [make_item(self.feed.job, i, f) for i, f in raw]
        self.feed.pages.keep(self.cursor, items)
        return items, gap

    async def write(self, blob: bytes, cursor: StreamId | None, count: int = 0) -> None:
        """Write, then wait until the socket has taken all of it: the client's reading speed sets
        the pace, and a slow client makes the gateway hold one write at most."""
        size = len(blob)
        await self._put(blob)
        del blob
        await self._settle(size, cursor, count)

    async def _put(self, blob: bytes) -> None:
        """Hand ``blob`` to the transport. aiohttp's own write waits for a drain (holding the
        data) after 64 KiB; its counter is reset here because ``_settle`` does the waiting."""
        if not blob:
            return
        writer = self.resp._payload_writer
        if writer is not None:
            writer.buffer_size = 0
        self.writing_since = asyncio.get_running_loop().time()  # a big first write may still wait
        try:
            await self.resp.write(blob)
        except (ConnectionError, RuntimeError) as e:  # reset by peer, reaped, or transport closed
            raise ClientGone from e
        finally:
            self.writing_since = None
        self._framing()

    async def _settle(self, size: int, cursor: StreamId | None, count: int = 0) -> None:
        """Wait until the client has taken what was written, then account for it."""
        if self.unsent():
            self.writing_since = asyncio.get_running_loop().time()
            try:
                await self._drain()
            except (ConnectionError, RuntimeError) as e:
                raise ClientGone from e
            finally:
                self.writing_since = None
        if size:
            self._account(size, cursor, count)

    def _account(self, size: int, cursor: StreamId | None, count: int) -> None:
        pending = self._unreported
        pending[1] += size
        pending[2] += 1
        self._queued_at_most += size
        if cursor is not None:
            pending[0] += count
            self.sent += count
            self.cursor = cursor
        if pending[2] >= 64:
            self.report()

    def report(self) -> None:
        """Add what was sent since the last report to the metrics (with one lag sample)."""
        entries, size, writes, pushes = self._unreported
        if not writes:
            return
        metrics = self.gw.metrics
        metrics.entries_sent.inc(entries)
        metrics.bytes_sent.inc(size)
        if pushes:
            metrics.pushes.inc(pushes)
        metrics.client_lag.observe(max(0.0, time.time() - self.cursor[0] / 1000))
        self._unreported = [0, 0, 0, 0]

    def _chunk_bytes(self) -> int:
        """A full chunk while the client keeps up; a small one once it is backed up."""
        s = self.gw.settings
        return s.write_buffer_bytes if self._backed_up() else s.write_chunk_bytes

    def _backed_up(self) -> bool:
        """Several chunks unread in the kernel send queue: the client has stopped keeping up,
        so writes get small and one that stops reading leaves little unsent in the gateway.
        (Fast clients often have a chunk or two queued: that is not it.) The queue only grows by
        what we write, so the kernel is asked only once that could have reached the limit."""
        limit = _BACKED_UP_CHUNKS * self.gw.settings.write_chunk_bytes
        if self._queued_at_most < limit:
            return False
        self._queued_at_most = kernel_queued(self.request.transport)
        return self._queued_at_most >= limit

    def unsent(self) -> int:
        transport = self.request.transport
        return transport.get_write_buffer_size() if transport is not None else 0

    def _framing(self) -> None:
        """Pushes frame their bytes as this response does: only once aiohttp has sent the headers
        (it holds them back until the first write), and never through compression."""
        if self._chunked is None:
            writer = self.resp._payload_writer
            chunked = getattr(writer, "chunked", None)  # unknown framing: never pushed to
            if isinstance(chunked, bool) and getattr(writer, "_compress", None) is None:
                self._chunked = chunked

    async def _drain(self) -> None:
        # aiohttp's own write() only drains past 64 KiB of its counter; ask the writer directly
        writer = self.resp._payload_writer
        if writer is not None:
            await writer.drain()


def kernel_queued(transport: asyncio.BaseTransport | None) -> int:
    """Bytes in the socket's kernel send queue (Linux ``SIOCOUTQ``); 0 where unknown."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or _OUTQ is None:
        return 0
    buf = bytearray(4)
    try:
        fcntl.ioctl(sock.fileno(), _OUTQ, buf, True)
    except (OSError, ValueError):
        return 0
    return int.from_bytes(buf, sys.byteorder)


_OUTQ: int | None = getattr(termios, "TIOCOUTQ", None)


def _after(items: list[Item], cursor: StreamId) -> list[Item]:
    k = 0
    while k < len(items) and items[k][SID] <= cursor:
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
