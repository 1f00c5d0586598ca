"""The asyncio publisher: ``await`` to publish, backpressure by awaiting, one sender task.

The sender task writes whatever is queued whenever the previous write has returned, so batches
grow with load and an idle publisher adds no delay (docs/design.md §10.7: no artificial batching delay).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from contextlib import suppress
from types import TracebackType
from typing import Any

from .config import PublisherConfig
from .constants import DEFAULT_FLUSH_TIMEOUT_S
from .core import PublisherCore
from .delivery import AsyncRedis, async_client, connect_async, write_async
from .handles import JobHandle
from .outbox import Backlog, DeliveryReport, LineOrigin, Offer

log = logging.getLogger(__name__)


class Publisher(PublisherCore):
    """Async publisher. Give it a URL (it owns and closes the client) or a ``redis.asyncio.Redis``
    or ``RedisCluster`` (yours to close). Not thread-safe: use it from one event loop; threads use
    ``SyncPublisher``.
    """

    def __init__(
        self,
        redis_client: AsyncRedis | str = "redis://127.0.0.1:6379/0",
        *,
        config: PublisherConfig | None = None,
        mask: Iterable[str] | None = (),
    ) -> None:
        self._url = redis_client if isinstance(redis_client, str) else None
        self._injected = None if isinstance(redis_client, str) else redis_client
        super().__init__(config, mask)

    def _reset(self) -> None:
        super()._reset()
        self._client: AsyncRedis | None = self._injected
        self._sender: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._progress: asyncio.Event | None = None

    async def __aenter__(self) -> Publisher:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Connect eagerly, load the write script, fail loudly: a few bounded retries, one warning each."""
        await connect_async(self._redis(), f"publisher {self.src}")
        self._connected = True
        self._ensure_sender()

    def _redis(self) -> AsyncRedis:
        if self._client is None:
            assert self._url is not None
            self._client = async_client(self._url, self.config)
        return self._client

    def _ensure_sender(self) -> asyncio.Event:
        if self._wake is None or self._sender is None or self._sender.done():
            if self._sender is not None:  # it ended (cancelled by someone, or a bug) mid-write?
                self._outbox.release_unsettled()
            self._wake = asyncio.Event()
            self._progress = asyncio.Event()
            self._sender = asyncio.get_running_loop().create_task(self._run(), name=f"logbroker-{self.src}")
        return self._wake

    def job(self, job: str, *, name: str | None = None, type: str | None = None) -> JobHandle[Any]:
        """A handle whose calls (``info``, ``status``, ``end``...) return awaitables."""
        return JobHandle(self, job, name, type)

    async def publish(
        self,
        job: str,
        msg: object = "",
        *,
        level: str | int = "info",
        kind: str = "log",
        step: str | None = None,
        worker: str | None = None,
        parent: str | None = None,
        status: str | None = None,
        fields: dict[str, Any] | None = None,
        job_name: str | None = None,
        job_type: str | None = None,
        ts_ms: int | None = None,
    ) -> None:
        """Queue one entry. With ``overflow="block"`` a full buffer makes this wait: nothing is lost."""
        wake = self._ensure_sender()
        if self._needs_resume(job):
            await self.resume(job)

        def offer() -> Offer:
            return self._offer(
                job, msg, level, kind, step, worker, parent, status, fields, job_name, job_type, ts_ms
            )

        if offer() is Offer.FULL:
            await self._until_queued(offer)
        wake.set()
        if self._outbox.backlog(job) is not Backlog.NONE:
            await self._make_way(job)

    async def log_line(
        self, origin: LineOrigin, level: str | int, msg: object, fields: dict[str, Any] | None
    ) -> None:
        """``publish`` of a handle's log line (the hot path; see ``Outbox.offer_line``)."""
        wake = self._ensure_sender()
        if self._needs_resume(origin.job):
            await self.resume(origin.job)
        if self._offer_line(origin, level, msg, fields) is Offer.FULL:
            await self._until_queued(lambda: self._offer_line(origin, level, msg, fields))
        wake.set()
        if self._outbox.backlog(origin.job) is not Backlog.NONE:  # no coroutine per line
            await self._make_way(origin.job)

    async def _make_way(self, job: str) -> None:
        """Let the sender run while a full batch waits (``Outbox.backlog``). The timeout only
        guards against a sender that was cancelled mid-write."""
        backlog = self._outbox.backlog(job)
        if backlog is Backlog.UNTAKEN:
            await asyncio.sleep(0)
        while backlog is Backlog.BEHIND_WRITE and self._sender is not None and not self._sender.done():
            assert self._progress is not None
            self._progress.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), 1.0)
            backlog = self._outbox.backlog(job)

    async def _until_queued(self, offer: Callable[[], Offer]) -> None:
        """``overflow="block"``: wait for each write to make room, then offer again."""
        assert self._wake is not None and self._progress is not None
        while True:
            self._progress.clear()
            self._wake.set()
            await self._progress.wait()
            if offer() is not Offer.FULL:
                return

    async def resume(self, job: str) -> int:
        """The last seq Redis holds for this publisher's src in ``job``; numbering continues after it.

        Done automatically on first use of a job when ``PublisherConfig.src`` is fixed, which is
        what makes a restarted worker (same src) neither lose nor duplicate: it asks where it is.
        """
        key, field = self._resume_field(job)
        return self._resumed_at(job, await self._redis().hget(key, field))

    async def _run(self) -> None:
        assert self._wake is not None and self._progress is not None
        wake, progress = self._wake, self._progress
        timeout: float | None = None
        while True:
            if timeout is None:
                await wake.wait()
            else:
                with suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout)
            wake.clear()
            batches, timeout = self._outbox.take()
            if not batches:
                continue
            delay: float | None
            try:
                outcomes = await write_async(
                    self._redis(), batches, self.config.retention, self.config.durability
                )
                delay = self._settle(batches, outcomes)
            except Exception as e:  # every failure is classified: retried or rejected, never lost
                delay = self._write_failed(batches, e)
            progress.set()
            if delay:
                await asyncio.sleep(delay)
            wake.set()

    async def flush(self, timeout: float = DEFAULT_FLUSH_TIMEOUT_S) -> DeliveryReport:
        """Wait until everything queued before this call is settled, or ``timeout`` seconds.

        The report's ``pending`` says how many entries are still not delivered.
        """
        marks = self._outbox.marks()
        if not marks:
            return self.report()
        self._ensure_sender().set()
        assert self._progress is not None
        deadline = time.monotonic() + timeout
        while self._outbox.outstanding(marks):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._progress.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), min(remaining, 0.5))
        return self.report()

    async def aclose(self, timeout: float = DEFAULT_FLUSH_TIMEOUT_S) -> DeliveryReport:
        """Flush for up to ``timeout`` s, stop, close what we own; the report says what was not delivered."""
        if self._closed:
            return self.report()
        report = await self.flush(timeout) if self._sender is not None else self.report()
        self._closed = True
        if self._sender is not None:
            self._sender.cancel()
            await asyncio.wait([self._sender])  # ours to cancel; a cancellation of aclose() still propagates
        if self._url is not None and self._client is not None:
            await self._client.aclose()
        if report.pending:
            log.warning("publisher %s closed with %d entries not delivered", self.src, report.pending)
        return report
