"""The publisher's buffer: ordering, sequence numbers, batches and overflow, with no I/O.

Both publishers (asyncio and threads) drive one ``Outbox``; it never touches the network, so the
rules below are written once and unit-tested without Redis:

* every accepted entry gets the next ``seq`` of its job, in call order, under one lock;
* a job has at most one batch in flight, always the oldest entries, so a retried batch carries
  the same ``seq`` values and the write script's idempotency makes the retry harmless;
* a full buffer either refuses (``block``: the driver makes the caller wait) or drops and counts,
  and the count is written into the job as a marker entry as soon as there is room again.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .codec import pack_body, pack_control
from .config import PublisherConfig
from .constants import KIND_LOG, KIND_STATUS, LEVELS, OVERFLOW_BLOCK, OVERFLOW_DROP_OLDEST
from .entry import (
    check_fields,
    check_identity,
    check_job_id,
    check_name,
    check_status,
    clip_message,
    end_line,
    status_line,
)
from .script import WriteResult

_WARNING = LEVELS["warning"]
_MAX_BATCHES_PER_ROUND = 64


class Offer(Enum):
    QUEUED = "queued"
    DROPPED = "dropped"
    FULL = "full"


@dataclass(slots=True)
class Batch:
    """The oldest unsent entries of one job; ``items`` are packed control tuples."""

    job: str
    keys: tuple[str, str, str]
    items: list[bytes]
    job_name: str | None
    job_type: str | None


@dataclass(slots=True)
class _JobQueue:
    job: str
    keys: tuple[str, str, str]
    items: deque[bytes] = field(default_factory=deque)
    next_seq: int = 1
    in_flight: int = 0  # number of items at the head that are being written
    job_name: str | None = None
    job_type: str | None = None
    enqueued: int = 0  # accepted entries, markers included, ever
    settled: int = 0  # stored, duplicate or rejected, ever
    dropped: int = 0  # dropped since the last marker was queued
    since: float = 0.0  # monotonic time the oldest unsent item arrived
    markers: set[int] = field(default_factory=set)  # ids of queued drop markers (never dropped)


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """What happened to what was published; ``ok`` only when nothing is pending, dropped or rejected."""

    accepted: int
    delivered: int
    duplicates: int
    pending: int
    dropped: int
    rejected: int

    @property
    def ok(self) -> bool:
        return self.pending == 0 and self.dropped == 0 and self.rejected == 0


class Outbox:
    def __init__(self, config: PublisherConfig, src: str) -> None:
        self.config = config
        self.src = src
        self.lock = threading.Lock()
        self._keyspace = config.keyspace
        self._queues: dict[str, _JobQueue] = {}
        self._ready: dict[str, None] = {}  # jobs with unsent items and nothing in flight, in arrival order
        self.entries = 0
        self.nbytes = 0
        self.accepted = 0
        self.delivered = 0
        self.duplicates = 0
        self.dropped = 0
        self.rejected = 0

    # ---- producers -------------------------------------------------------------------------
    def offer(
        self,
        job: str,
        msg: object,
        *,
        level: int = LEVELS["info"],
        kind: int = KIND_LOG,
        step: str | None = None,
        worker: str | None = None,
        parent: str | None = None,
        status: str | None = None,
        fields: dict[str, Any] | None = None,
        job_name: str | None = None,
        job_type: str | None = None,
        ts_ms: int | None = None,
    ) -> Offer:
        """Queue one entry; validation errors raise :class:`InvalidEntry` before anything is queued."""
        step, worker, parent = check_identity(step, worker, parent)
        job_name = check_name("job_name", job_name)
        job_type = check_name("job_type", job_type)
        text = clip_message(msg, self.config.max_message_bytes)
        if fields is not None:
            fields = check_fields(fields)
        if kind != KIND_LOG:
            status = check_status(status)
            if kind == KIND_STATUS:
                line = status_line(status, job, job_name, job_type, step, worker)
            else:
                line = end_line(status, job, job_name, job_type)
            text = f"{line}: {text}" if text else line
        elif status is not None:
            status = check_status(status)
        if ts_ms is None:
            ts_ms = time.time_ns() // 1_000_000
        with self.lock:
            q = self._queues.get(job) or self._new_queue(job)
            if job_name:
                q.job_name = job_name
            if job_type:
                q.job_type = job_type
            seq = q.next_seq
            body = pack_body(
                ts_ms,
                level,
                kind,
                text,
                step,
                worker,
                parent,
                status,
                job_name,
                job_type,
                self.src,
                seq,
                fields,
            )
            item = pack_control(step or "", worker or "", self.src, seq, kind, status or "", body)
            if self._full(len(item)):
                if self.config.overflow == OVERFLOW_BLOCK:
                    return Offer.FULL
                if not self._make_room(q, len(item)):
                    q.dropped += 1
                    self.dropped += 1
                    return Offer.DROPPED
            elif q.dropped:  # there is room again: say what was lost before what comes next
                self._queue_marker(q)
                seq = q.next_seq
                body = pack_body(
                    ts_ms,
                    level,
                    kind,
                    text,
                    step,
                    worker,
                    parent,
                    status,
                    job_name,
                    job_type,
                    self.src,
                    seq,
                    fields,
                )
                item = pack_control(step or "", worker or "", self.src, seq, kind, status or "", body)
            self._append(q, item)
            return Offer.QUEUED

    def _new_queue(self, job: str) -> _JobQueue:
        check_job_id(job)
        q = _JobQueue(job, self._keyspace.job_keys(job))
        self._queues[job] = q
        return q

    def _full(self, size: int) -> bool:
        cfg = self.config
        return self.entries >= cfg.max_buffer_entries or (
            self.entries > 0 and self.nbytes + size > cfg.max_buffer_bytes
        )

    def _make_room(self, q: _JobQueue, size: int) -> bool:
        """``drop_oldest``: drop unsent entries, this job's first, until the new one fits."""
        if self.config.overflow != OVERFLOW_DROP_OLDEST:
            return False
        victims = [q, *(other for other in self._queues.values() if other is not q)]
        for victim in victims:
            index = victim.in_flight
            while self._full(size) and index < len(victim.items):
                dropped = victim.items[index]
                if id(dropped) in victim.markers:  # a marker carries counts: never drop it
                    index += 1
                    continue
                del victim.items[index]
                self.entries -= 1
                self.nbytes -= len(dropped)
                victim.settled += 1  # accepted, then given up: it no longer holds up flush()
                victim.dropped += 1
                self.dropped += 1
            if not self._full(size):
                return True
        return False

    def _append(self, q: _JobQueue, item: bytes) -> None:
        if len(q.items) == q.in_flight:
            q.since = time.monotonic()
            if q.in_flight == 0:
                self._ready[q.job] = None
        q.items.append(item)
        q.next_seq += 1
        q.enqueued += 1
        self.accepted += 1
        self.entries += 1
        self.nbytes += len(item)

    def _queue_marker(self, q: _JobQueue) -> None:
        """The visible trace of a drop: a job-level warning with the exact count, exempt from limits."""
        n, q.dropped = q.dropped, 0
        policy = self.config.overflow
        msg = f"dropped {n} entries: publisher {self.src} buffer was full (overflow policy {policy})"
        fields = {"dropped": n, "policy": policy}
        body = pack_body(
            time.time_ns() // 1_000_000,
            _WARNING,
            KIND_LOG,
            msg,
            None,
            None,
            None,
            None,
            q.job_name,
            q.job_type,
            self.src,
            q.next_seq,
            fields,
        )
        item = pack_control("", "", self.src, q.next_seq, KIND_LOG, "", body)
        q.markers.add(id(item))
        self._append(q, item)

    # ---- the sender ------------------------------------------------------------------------
    def take(self, now: float | None = None) -> tuple[list[Batch], float | None]:
        """Batches due now, and how long until the next one is due (``None``: nothing waits)."""
        cfg = self.config
        linger = cfg.linger_ms / 1000
        now = time.monotonic() if now is None else now
        batches: list[Batch] = []
        wait: float | None = None
        with self.lock:
            for job in list(self._ready):
                q = self._queues[job]
                unsent = len(q.items)
                if linger and unsent < cfg.max_batch_entries and now - q.since < linger:
                    due_in = q.since + linger - now
                    wait = due_in if wait is None else min(wait, due_in)
                    continue
                n, size = 0, 0
                for item in q.items:
                    if n and (n >= cfg.max_batch_entries or size + len(item) > cfg.max_batch_bytes):
                        break
                    n += 1
                    size += len(item)
                q.in_flight = n
                del self._ready[job]
                items = [q.items[i] for i in range(n)] if n < unsent else list(q.items)
                batches.append(Batch(job, q.keys, items, q.job_name, q.job_type))
                if len(batches) >= _MAX_BATCHES_PER_ROUND:
                    break
        return batches, wait

    def settle(self, batch: Batch, result: WriteResult | None) -> None:
        """The batch is done: stored (``result``) or rejected for good (``None``); free its room."""
        n = len(batch.items)
        with self.lock:
            q = self._queues[batch.job]
            for _ in range(n):
                item = q.items.popleft()
                self.nbytes -= len(item)
                q.markers.discard(id(item))
            q.in_flight = 0
            q.settled += n
            self.entries -= n
            if result is None:
                self.rejected += n
            else:
                self.duplicates += result.duplicates
                self.delivered += n - result.duplicates
            if q.dropped:
                self._queue_marker(q)
            if q.items:
                q.since = time.monotonic()
                self._ready[q.job] = None

    def retry(self, batches: list[Batch]) -> None:
        """A write failed in a way worth retrying: the same entries go again, first in line."""
        with self.lock:
            for batch in batches:
                q = self._queues[batch.job]
                q.in_flight = 0
                self._ready[q.job] = None

    # ---- waiting for delivery --------------------------------------------------------------
    def marks(self) -> dict[str, int]:
        """Per job, how many entries must be settled for everything queued so far to be done."""
        with self.lock:
            for q in self._queues.values():
                if q.dropped:
                    self._queue_marker(q)
            return {q.job: q.enqueued for q in self._queues.values() if q.settled < q.enqueued}

    def outstanding(self, marks: dict[str, int]) -> int:
        with self.lock:
            return sum(max(0, mark - self._queues[job].settled) for job, mark in marks.items())

    def has_full_batch(self, job: str) -> bool:
        q = self._queues.get(job)
        return q is not None and len(q.items) - q.in_flight >= self.config.max_batch_entries

    def report(self) -> DeliveryReport:
        with self.lock:
            return DeliveryReport(
                self.accepted, self.delivered, self.duplicates, self.entries, self.dropped, self.rejected
            )
