"""The publisher for threads and ``multiprocessing`` workers: plain calls, one sender thread.

Calls from any number of threads queue entries under the outbox's lock; a daemon thread writes
them. The thread and the connections are created on first use in each process, so a publisher
made before ``fork()`` is safe to use in the children (see ``broker.core``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

from .config import PublisherConfig
from .constants import DEFAULT_FLUSH_TIMEOUT_S, EXIT_FLUSH_TIMEOUT_S
from .core import PublisherCore, say_lost
from .delivery import SyncRedis, connect_sync, sync_client, write_sync
from .handles import JobHandle
from .outbox import Backlog, DeliveryReport, LineOrigin, Offer

log = logging.getLogger(__name__)


class SyncPublisher(PublisherCore):
    """Thread-safe, fork-safe publisher. A URL makes it own its client; an injected
    ``redis.Redis`` stays yours (redis-py resets its pool in a forked child by itself)."""

    def __init__(
        self,
        redis_client: SyncRedis | str = "redis://127.0.0.1:6379/0",
        *,
        config: PublisherConfig | None = None,
        mask: Iterable[str] | None = (),
    ) -> None:
        self._url = redis_client if isinstance(redis_client, str) else None
        self._injected = None if isinstance(redis_client, str) else redis_client
        super().__init__(config, mask)

    def _reset(self) -> None:
        super()._reset()
        self._client: SyncRedis | None = self._injected
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._progress = threading.Condition(threading.Lock())
        self._stopping = False
        self._start_lock = threading.Lock()

    def __enter__(self) -> SyncPublisher:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(self) -> None:
        """Connect eagerly, load the write script, fail loudly: a few bounded retries, one warning each."""
        connect_sync(self._redis(), f"publisher {self.src}")
        self._connected = True
        self._ensure_sender()

    def _redis(self) -> SyncRedis:
        if self._client is None:
            assert self._url is not None
            self._client = sync_client(self._url, self.config)
        return self._client

    def _ensure_sender(self) -> None:
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    thread = threading.Thread(target=self._run, name=f"logbroker-{self.src}", daemon=True)
                    thread.start()
                    self._thread = thread

    def _revive_sender(self) -> bool:
        """Replace a sender thread that died (only a bug can kill it: every write failure is
        caught), with what it took and never settled; otherwise entries would pile up unsent and
        a caller blocked on a full buffer would wait for good. Checked where callers wait, not
        per line. True if the sender is running."""
        thread = self._thread
        if self._stopping or thread is None or thread.is_alive():
            return not self._stopping and thread is not None
        with self._start_lock:
            if self._thread is thread:
                log.error("publisher %s: the sender thread died; starting a new one", self.src)
                self._outbox.release_unsettled()
                self._thread = None
        self._ensure_sender()
        return True

    def job(self, job: str, *, name: str | None = None, type: str | None = None) -> JobHandle[None]:
        return JobHandle(self, job, name, type)

    def publish(
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
        """Queue one entry; with ``overflow="block"`` a full buffer makes the calling thread wait."""
        if self._thread is None:
            self._ensure_sender()
        if self._needs_resume(job):
            self.resume(job)

        def offer() -> Offer:
            return self._offer(
                job, msg, level, kind, step, worker, parent, status, fields, job_name, job_type, ts_ms
            )

        if offer() is Offer.FULL:
            self._until_queued(offer)
        self._queued(job)

    def log_line(
        self, origin: LineOrigin, level: str | int, msg: object, fields: dict[str, Any] | None
    ) -> None:
        """``publish`` of a handle's log line (the hot path; see ``Outbox.offer_line``)."""
        if self._thread is None:
            self._ensure_sender()
        if self._needs_resume(origin.job):
            self.resume(origin.job)
        if self._offer_line(origin, level, msg, fields) is Offer.FULL:
            self._until_queued(lambda: self._offer_line(origin, level, msg, fields))
        self._queued(origin.job)

    def _queued(self, job: str) -> None:
        """Wake the sender, and let it run while a full batch waits (``Outbox.backlog``): a busy
        caller thread would keep the GIL from it for up to the switch interval (5 ms) after
        each send and each reply."""
        if not self._wake.is_set():
            self._wake.set()
        backlog = self._outbox.backlog(job)
        if backlog is Backlog.UNTAKEN:
            time.sleep(0)  # hands over the GIL
        elif backlog is Backlog.BEHIND_WRITE:
            with self._progress:
                while self._outbox.backlog(job) is Backlog.BEHIND_WRITE and self._revive_sender():
                    self._progress.wait(0.05)

    def _until_queued(self, offer: Callable[[], Offer]) -> None:
        """``overflow="block"``: the calling thread waits for each write to make room, then offers again."""
        while True:
            self._revive_sender()
            with self._progress:
                self._wake.set()
                self._progress.wait(0.05)  # woken by the sender after each write
            if offer() is not Offer.FULL:
                return

    def resume(self, job: str) -> int:
        """The last seq Redis holds for this publisher's src in ``job``; numbering continues after it
        (automatic on first use of a job when ``PublisherConfig.src`` is fixed)."""
        key, field = self._resume_field(job)
        return self._resumed_at(job, self._redis().hget(key, field))

    def _run(self) -> None:
        timeout: float | None = None
        while not self._stopping:
            self._wake.wait(timeout)
            self._wake.clear()
            batches, timeout = self._outbox.take()
            if not batches:
                continue
            delay: float | None
            try:
                outcomes = write_sync(self._redis(), batches, self.config.retention, self.config.durability)
                delay = self._settle(batches, outcomes)
            except Exception as e:  # every failure is classified: retried or rejected, never lost
                delay = self._write_failed(batches, e)
            with self._progress:
                self._progress.notify_all()
            if delay:
                time.sleep(delay)
            self._wake.set()

    def flush(self, timeout: float = DEFAULT_FLUSH_TIMEOUT_S) -> DeliveryReport:
        """Wait until everything queued before this call is settled, or ``timeout`` seconds."""
        marks = self._outbox.marks()
        if marks:
            self._ensure_sender()
            self._wake.set()
            deadline = time.monotonic() + timeout
            with self._progress:
                while self._outbox.outstanding(marks):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._revive_sender()
                    self._progress.wait(min(remaining, 0.5))
        return self.report()

    def _at_exit(self) -> None:
        """Deliver what is still buffered, for up to ``EXIT_FLUSH_TIMEOUT_S``; say what is left."""
        if self._closed or not (self._outbox.report().pending or self._thread is not None):
            return
        report = self.close(EXIT_FLUSH_TIMEOUT_S)
        if report.pending:
            say_lost(
                self.src,
                report.pending,
                f"Redis did not take them within {EXIT_FLUSH_TIMEOUT_S:.0f}s of exit",
            )

    def close(self, timeout: float = DEFAULT_FLUSH_TIMEOUT_S) -> DeliveryReport:
        """Flush for up to ``timeout`` s, stop the sender, close what we own; report what is left."""
        if self._closed:
            return self.report()
        report = self.flush(timeout)
        self._closed = True
        self._stopping = True
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if self._url is not None and self._client is not None:
            self._client.close()
        if report.pending:
            log.warning("publisher %s closed with %d entries not delivered", self.src, report.pending)
        return report
