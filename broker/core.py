"""What both publishers share: identity, the outbox, settling write outcomes, health, fork safety.

Fork safety: a child process must never write through its parent's sockets or resend its
parent's buffered entries (the parent delivers those). Every live publisher is reset in the child
right after ``fork()``: new ``src``, empty outbox, no connections, no sender; it starts again on
first use.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing.util
import os
import secrets
import socket
import sys
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .config import PublisherConfig
from .constants import KINDS, LEVELS, META_PUBLISHER, META_SEP, META_SEQ
from .delivery import Backoff, Outcome, is_retryable
from .entry import kind_number, level_number
from .errors import PublisherClosed
from .masking import Masker
from .outbox import Batch, DeliveryReport, LineOrigin, Offer, Outbox

log = logging.getLogger(__name__)
_LIVE: weakref.WeakSet[PublisherCore] = weakref.WeakSet()


def default_src() -> str:
    """``host:pid:random``: unique per publisher instance, so a recycled pid (pid 1 in every
    container) never makes a new publisher's entries look like duplicates of an old one's."""
    return f"{socket.gethostname()[:64]}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclass(frozen=True, slots=True)
class PublisherHealth:
    connected: bool
    consecutive_failures: int
    last_error: str | None
    pending: int
    dropped: int
    rejected: int


class PublisherCore:
    """Base of :class:`Publisher` and :class:`SyncPublisher`; not used on its own."""

    def __init__(self, config: PublisherConfig | None, mask: Iterable[str] | None = ()) -> None:
        self.config = config or PublisherConfig()
        values = [mask] if isinstance(mask, str) else list(mask or ())  # a bare string is one value
        # None: nothing to mask, and the hot path makes no masking call at all
        self._masker = Masker(values) if values else None
        self._pid = os.getpid()
        self._reset()
        self._closed = False
        _LIVE.add(self)

    def _reset(self) -> None:
        forked = self._pid != os.getpid()
        self._pid = os.getpid()
        # a fixed src belongs to one process: a forked child numbers its entries under its own
        self.src = self.config.src and (f"{self.config.src}:{self._pid}" if forked else self.config.src)
        self.src = self.src or default_src()
        self._resumed: set[str] = set()
        self._outbox = Outbox(self.config, self.src, self._masker)  # a forked child masks the same
        self._backoff = Backoff()
        self._connected = False
        self._last_error: str | None = None

    def mask(self, value: str) -> None:
        """Mask ``value`` (at least 4 characters) in ``msg`` and string ``fields`` of every entry
        published from now on, in every job: GitHub's ``::add-mask::``. Entries already queued
        were packed as they were; mask a secret before anything can print it."""
        with self._outbox.lock:
            if self._masker is None:
                self._masker = Masker([value])
                self._outbox.masker = self._masker
            else:
                self._masker.add(value)

    def _after_fork_in_child(self) -> None:
        self._reset()

    def _at_exit(self) -> None:
        """The interpreter or the worker process is ending: deliver what is buffered (the sync
        publisher can), else say how much is lost. The async publisher needs its event loop,
        which is gone by now: ``await pub.aclose()`` is its rule."""
        pending = self._outbox.report().pending
        if pending and not self._closed:
            say_lost(self.src, pending, "not closed before exit (await pub.aclose())")

    def _offer(
        self,
        job: str,
        msg: object,
        level: str | int,
        kind: str,
        step: str | None,
        worker: str | None,
        parent: str | None,
        status: str | None,
        fields: dict[str, Any] | None,
        job_name: str | None,
        job_type: str | None,
        ts_ms: int | None,
    ) -> Offer:
        if self._closed:
            raise PublisherClosed(f"publisher {self.src} is closed")
        lv = LEVELS.get(level) if isinstance(level, str) else None
        kd = KINDS.get(kind)
        return self._outbox.offer(
            job,
            msg,
            level=lv if lv is not None else level_number(level),
            kind=kd if kd is not None else kind_number(kind),
            step=step,
            worker=worker,
            parent=parent,
            status=status,
            fields=fields,
            job_name=job_name,
            job_type=job_type,
            ts_ms=ts_ms,
        )

    def _offer_line(
        self, origin: LineOrigin, level: str | int, msg: object, fields: dict[str, Any] | None
    ) -> Offer:
        if self._closed:
            raise PublisherClosed(f"publisher {self.src} is closed")
        lv = LEVELS.get(level) if isinstance(level, str) else None
        return self._outbox.offer_line(origin, lv if lv is not None else level_number(level), msg, fields)

    def _say_conflicts(self, batch: Batch, conflicts: Sequence[tuple[int, int]]) -> None:
        """Seqs of this publisher's src already stored with other content: another live publisher
        writes under the same ``src`` (a rolling restart overlapping the old process, or one fixed
        ``src`` configured twice). Its entries are refused, never called duplicates: say it loudly."""
        message = (
            f"job {batch.job}: {len(conflicts)} entries were NOT stored: their seqs under src {self.src!r} "
            "are already stored with other content; is another publisher running with the same src?"
        )
        self._last_error = message
        log.error("%s", message)

    def _settle(self, batches: Sequence[Batch], outcomes: Sequence[Outcome]) -> float | None:
        """Apply write outcomes; returns how long to wait before retrying some, or ``None``."""
        retry: list[Batch] = []
        error: BaseException | None = None
        for batch, outcome in zip(batches, outcomes, strict=True):
            if not isinstance(outcome, BaseException):
                if outcome.refused:
                    log.error(
                        "job %s has ended: %d entries published after its end were refused",
                        batch.job, outcome.refused,
                    )  # fmt: skip
                if outcome.conflicts:
                    self._say_conflicts(batch, outcome.conflicts)
                self._outbox.settle(batch, outcome)
            elif is_retryable(outcome):
                retry.append(batch)
                error = outcome
            else:
                log.error("rejected %d entries of job %s for good: %s", len(batch.items), batch.job, outcome)
                self._outbox.settle(batch, None)
        if retry:
            self._outbox.retry(retry)
            return self._failed(error)
        self._succeeded()
        return None

    def _write_failed(self, batches: Sequence[Batch], error: BaseException) -> float | None:
        """The whole round trip failed (connection lost, timeout...): same as every batch failing."""
        return self._settle(batches, [error] * len(batches))

    def _needs_resume(self, job: str) -> bool:
        return self.config.src is not None and job not in self._resumed

    def _resume_field(self, job: str) -> tuple[str, str]:
        """(meta key, field) holding the last seq stored for this publisher's src in ``job``."""
        return self.config.keyspace.meta(job), f"{META_PUBLISHER}{META_SEP}{self.src}{META_SEP}{META_SEQ}"

    def _resumed_at(self, job: str, raw: object) -> int:
        last = int(raw) if isinstance(raw, bytes | str | int) else 0
        self._outbox.resume(job, last)
        self._resumed.add(job)
        return last

    def _failed(self, error: BaseException | None) -> float:
        """Record a failed round trip; returns how long to wait before the next one."""
        self._connected = False
        self._last_error = f"{type(error).__name__}: {error}"
        delay = self._backoff.next_delay_s()
        n = self._backoff.failures
        if n == 1 or n % 10 == 0:
            log.warning(
                "publisher %s: write failed (%s), attempt %d, retrying in %.2fs; %d entries kept",
                self.src,
                self._last_error,
                n,
                delay,
                self._outbox.entries,
            )
        return delay

    def _succeeded(self) -> None:
        if self._backoff.failures:
            log.info(
                "publisher %s: delivering again after %d failed attempts", self.src, self._backoff.failures
            )
        self._backoff.reset()
        self._connected = True

    def report(self) -> DeliveryReport:
        """Counts since this publisher started (in this process)."""
        return self._outbox.report()

    @property
    def health(self) -> PublisherHealth:
        r = self._outbox.report()
        return PublisherHealth(
            self._connected, self._backoff.failures, self._last_error, r.pending, r.dropped, r.rejected
        )


def _after_fork() -> None:
    for publisher in list(_LIVE):
        publisher._after_fork_in_child()


def _flush_at_exit() -> None:
    """Every publisher still open, at the end of the process: a ``multiprocessing.Pool`` task that
    returned without ``flush()`` left entries in its worker's buffer, lost when the worker ended."""
    for publisher in list(_LIVE):
        try:
            publisher._at_exit()
        except Exception as e:  # the process is ending: report, never raise from an exit hook
            print(f"logbroker: publisher {publisher.src} at exit: {e}", file=sys.stderr)


def say_lost(src: str | None, pending: int, why: str) -> None:
    print(f"logbroker: publisher {src}: {pending} entries not delivered, {why}", file=sys.stderr)


class _ExitHooks:
    """A multiprocessing child started by fork leaves through ``os._exit``: ``atexit`` never runs
    there, only the finalizers registered in the child itself, after multiprocessing cleared the
    parent's. So the hook is registered again in each such child, at the moment it starts."""

    def __init__(self) -> None:
        atexit.register(_flush_at_exit)  # this process, and children started by spawn
        multiprocessing.util.register_after_fork(self, _ExitHooks._in_child)

    def _in_child(self) -> None:
        multiprocessing.util.Finalize(None, _flush_at_exit, exitpriority=100)


_EXIT_HOOKS = _ExitHooks()
os.register_at_fork(after_in_child=_after_fork)
