"""One SSE client: a cursor and a writer (docs/design.md §6).

While caught up, a subscriber takes every frame after its cursor from the job's ring and sends
them in one ``write()``, then awaits the transport's drain: the client's reading speed paces it,
never a buffer that can fill. Behind the ring, it pages from Redis with ``XRANGE`` at its own pace
and rejoins the ring once caught up. A client that stops reading without closing is detected by
the hub's watchdog and its connection is closed; memory per client stays one page at most.
"""

from __future__ import annotations

import asyncio
import logging
import time

import redis
from aiohttp import web

from broker.keys import Keyspace

from ..errors import ClientGone
from ..ids import ZERO, StreamId, format_id
from ..metrics import Metrics
from ..redis_clients import AnyRedis
from ..settings import GatewaySettings
from ..storage import cursor_lost, standing, xrange
from . import sse
from .filter import Filter
from .frames import Batch, Frames, Shared, frames, gap_frame, reset_frame
from .items import Item, after
from .ring import Ring
from .sse_response import SSEResponse

log = logging.getLogger(__name__)
_BACKED_UP_CHUNKS = 8  # this many chunks unread in the kernel: a client that stopped keeping up


class Subscriber:
    """Costs per write are kept off the hot path: while a subscriber is parked (caught up,
    unfiltered, its transport empty) the ring writes each small append to it directly, from bytes
    shared by all such clients; otherwise the ring wakes it through its own event. A watchdog (not
    a timer per write) reaps clients stuck in a write, and metrics are added in batches."""

    def __init__(
        self,
        ring: Ring,
        flt: Filter,
        cursor: StreamId,
        *,
        redis: AnyRedis,
        keyspace: Keyspace,
        settings: GatewaySettings,
        metrics: Metrics,
    ) -> None:
        self.ring = ring
        self.filter = flt
        self.cursor = cursor
        self.resp = SSEResponse()
        self.sent = 0
        self.writing_since: float | None = None  # loop time a pending write started (watchdog)
        self.parked = False  # see ``push``
        self.pushes = 0
        self._redis = redis
        self._keyspace = keyspace
        self._settings = settings
        self._metrics = metrics
        self._stopped = False
        self._wake = asyncio.Event()
        self._unreported = [0, 0, 0, 0]  # entries, bytes, writes, pushes not yet in the metrics
        self._backlog: list[Item] = []  # the rest of a page read from Redis, not yet sent
        self._ended = False  # the end event went out in a push
        self._queued_at_most = 0  # the kernel send queue at the last look plus what was written since
        self._generation = ring.generation  # the ring's resets this client has been told of

    def start_with(self, items: list[Item]) -> None:
        """Items to send before anything else: the id-only item of a ``tail=N`` start that
        matched nothing (``gateway.live.start``), which moves the client's Last-Event-ID."""
        self._backlog = items

    async def serve(self, request: web.Request) -> SSEResponse:
        """The whole stream: headers, ``retry:``, a ``gap`` when the cursor's successors were
        trimmed, what ``start_with`` gave, then pages and the ring until the end."""
        await self.resp.prepare(request)
        try:
            await self.write(sse.retry(self._settings.retry_ms), None)
            where = await standing(self._redis, self._keyspace, self.ring.job, self.cursor)
            if where.lost:
                await self._reset(where.first_ever)
            if where.trimmed_to is not None:
                frame, self.cursor = gap_frame(self.cursor, where.trimmed_to)
                await self.write(frame, None)
            await self.run()
        except ClientGone:
            pass
        except Exception:
            self.resp.abort()  # headers are gone: the client must see a broken stream, not an end
            raise
        return self.resp

    def wake(self) -> None:
        self._wake.set()

    def push(self, batch: Batch) -> None:
        """The ring's direct write while parked. What the socket does not take at once stays in
        the transport (one batch); the subscriber then leaves the park and drains it in its own
        task, where the watchdog sees it. A batch larger than a small write goes to a client
        whose kernel queue is backed up only through its own task, in small writes."""
        resp = self.resp
        if not resp.framing_known or resp.closing or batch.after != self.cursor:
            self._unpark()
            return
        if len(batch.blob) > self._settings.write_buffer_bytes and self._backed_up():
            self._unpark()
            return
        size = resp.put_shared(batch)
        self.pushes += 1
        self._unreported[3] += 1
        self._account(size, batch.cursor, batch.events)
        if batch.ended:
            self._ended = True
            self._unpark()
        elif resp.unsent():
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
        self._metrics.reaped.inc()
        log.info(
            "closing SSE client of %s: no progress in %ss", self.ring.job, self._settings.write_timeout_s
        )
        self.resp.abort()

    async def run(self) -> None:
        self.ring.listen(self)
        try:
            while not self._stopped and not self._ended:
                self._wake.clear()  # before looking: an append after this wakes us
                await self._settle(0, None)  # what a push left in the transport drains first
                if self._lost():
                    await self._reset(self.ring.first_id)
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
        finally:
            self.parked = False
            self.ring.unlisten(self)
            self.report()

    def _lost(self) -> bool:
        """The ring holds another incarnation of the job than the client's cursor came from: the
        ring was reset (Redis came back without the job's data), or the job's first entry, known
        only once it arrives, is newer than the cursor (docs/design.md §5, ``reset``)."""
        ring = self.ring
        first = ring.first_id
        if ring.generation != self._generation:
            self._generation = ring.generation
            if first is None:
                return self.cursor != ZERO  # the job is gone: what the client holds is lost now
        return cursor_lost(self.cursor, first)

    async def _reset(self, first_ever: StreamId | None) -> None:
        """Tell the client to drop what it holds of the job; go on from the job's start."""
        log.warning("SSE client of %s: cursor %s names lost data; sending reset", self.ring.job, self.cursor)
        self._metrics.resets.inc()
        self._backlog = []
        await self.write(reset_frame(self.cursor, first_ever), ZERO)

    async def _put_due(self, due: Frames | Shared) -> int:
        """Bytes shared with other clients go to the transport as they are, already framed;
        the rest through aiohttp."""
        if isinstance(due, Shared) and self.resp.framing_known:
            return self.resp.put_shared(due)
        blob = due.blob
        await self._put(blob)
        return len(blob)

    async def _due(self) -> Frames | Shared | None:
        """The next write, or ``None`` when there is nothing to send. What a write chunk could
        not take of a page from Redis is kept for the next write, never read and decoded twice;
        a ring slice is let go before the write waits."""
        if not self._backlog and self.cursor == self.ring.last:
            return None
        limit = self._chunk_bytes()
        if not self._backlog and not self.filter.active:
            shared = self.ring.frames_after(self.cursor, limit)
            if shared is not None:
                return shared if shared.blob else None
        paged = bool(self._backlog)
        items = self._backlog or self.ring.after(self.cursor)
        if items is None:
            items, paged = await self._page(), True
        if not items:
            return None
        due = frames(items, self.filter, limit)
        self._backlog = after(items, due.cursor) if paged and due.cursor is not None else []
        return due

    async def _idle(self) -> None:
        """Wait for the ring; parked when the ring may write to us directly meanwhile. The
        heartbeat goes out only when nothing else did during the wait."""
        self.report()
        pushes = self.pushes
        self.parked = self._parkable()
        try:
            async with asyncio.timeout(self._settings.heartbeat_s):
                await self._wake.wait()
        except TimeoutError:
            self.parked = False
            if self.pushes == pushes:
                await self.write(sse.comment("heartbeat"), None)
        finally:
            self.parked = False

    def _parkable(self) -> bool:
        return (
            self.resp.framing_known
            and not self._stopped
            and not self.filter.active
            and not self._backlog
            and self.cursor == self.ring.last
            and not self.resp.closing
            and not self.resp.unsent()
        )

    async def _page(self) -> list[Item]:
        """Entries after the cursor for a client behind the ring: from a page another lagging
        client of the job had read, else straight from Redis (and kept for the others)."""
        pages = self.ring.pages
        in_flight = pages.reading(self.cursor)
        if in_flight is not None:
            await in_flight.wait()
        kept = pages.after(self.cursor)
        if kept:
            self._metrics.page_hits.inc()
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
        the cursor were trimmed, the gap event that moves the cursor past them. The page is
        bounded in entries and bytes (``PageBudget``); the next one starts after its last entry,
        where the client's cursor is once the page is sent."""
        ring = self.ring
        budget = ring.pages.budget
        self._metrics.pages.inc()
        try:
            raw = await xrange(self._redis, ring.key, "(" + format_id(self.cursor), count=budget.count())
            first_available = (await standing(self._redis, self._keyspace, ring.job, self.cursor)).trimmed_to
        except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
            # Redis away: keep the client (heartbeats continue while idle) and try again later
            log.info("paging %s from Redis failed (%s); the client waits", ring.job, type(e).__name__)
            await asyncio.sleep(0.5)
            return [], b""
        gap = b""
        if first_available is not None:
            gap, self.cursor = gap_frame(self.cursor, first_available)
        if not raw:  # everything between the cursor and the ring was trimmed
            return ring.after(ring.base) or [], gap
        items = budget.take(ring.job, raw)
        ring.pages.keep(self.cursor, items)
        return items, gap

    async def write(self, blob: bytes, cursor: StreamId | None, count: int = 0) -> None:
        """Write, then wait until the socket has taken all of it: the client's reading speed sets
        the pace, and a slow client makes the gateway hold one write at most."""
        size = len(blob)
        await self._put(blob)
        del blob
        await self._settle(size, cursor, count)

    async def _put(self, blob: bytes) -> None:
        if not blob:
            return
        self.writing_since = asyncio.get_running_loop().time()  # a big first write may still wait
        try:
            await self.resp.send(blob)
        finally:
            self.writing_since = None

    async def _settle(self, size: int, cursor: StreamId | None, count: int = 0) -> None:
        """Wait until the client has taken what was written, then account for it."""
        if self.resp.unsent():
            self.writing_since = asyncio.get_running_loop().time()
            try:
                await self.resp.drain()
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
        """Add what was sent since the last report to the metrics, with one lag sample when the
        client is live: its cursor is an entry the ring took in (stored after this gateway began
        watching the job). A client reading history, or with no entry yet, lags nothing: the age
        of an old job's entries is not a delay of ours."""
        entries, size, writes, pushes = self._unreported
        if not writes:
            return
        metrics = self._metrics
        metrics.entries_sent.inc(entries)
        metrics.bytes_sent.inc(size)
        if pushes:
            metrics.pushes.inc(pushes)
        if self.cursor > self.ring.base and not self._backlog:
            metrics.client_lag.observe(max(0.0, time.time() - self.cursor[0] / 1000))
        self._unreported = [0, 0, 0, 0]

    def _chunk_bytes(self) -> int:
        """A full chunk while the client keeps up; a small one once it is backed up."""
        s = self._settings
        return s.write_buffer_bytes if self._backed_up() else s.write_chunk_bytes

    def _backed_up(self) -> bool:
        """Several chunks unread in the kernel send queue: the client has stopped keeping up,
        so writes get small and one that stops reading leaves little unsent in the gateway.
        (Fast clients often have a chunk or two queued: that is not it.) The queue only grows by
        what we write, so the kernel is asked only once that could have reached the limit."""
        limit = _BACKED_UP_CHUNKS * self._settings.write_chunk_bytes
        if self._queued_at_most < limit:
            return False
        self._queued_at_most = self.resp.kernel_queued()
        return self._queued_at_most >= limit

    def unsent(self) -> int:
        return self.resp.unsent()
