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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from .codec import LinePacker, pack_item
from .config import PublisherConfig
from .constants import KIND_LOG, LEVELS, OVERFLOW_BLOCK, OVERFLOW_DROP_OLDEST
from .entry import Draft, as_text, check_fields, check_job_id, clip_message, make_draft
from .masking import Masker
from .script import WriteResult

_WARNING = LEVELS["warning"]
_MAX_BATCHES_PER_ROUND = 64


class LineOrigin(Protocol):
    """Who writes a handle's log lines, checked when the handle was made (``broker.handles``)."""

    @property
    def job(self) -> str: ...
    @property
    def job_name(self) -> str | None: ...
    @property
    def job_type(self) -> str | None: ...
    def packer(self, src: str) -> LinePacker: ...


class Backlog(Enum):
    """See ``Outbox.backlog``."""

    NONE = "none"
    UNTAKEN = "untaken"  # a full batch the sender has not taken yet
    BEHIND_WRITE = "behind_write"  # a full batch waits while the one before it is written


class Offer(Enum):
    QUEUED = "queued"
    DROPPED = "dropped"
    FULL = "full"


@dataclass(slots=True)
class Batch:
    """The oldest unsent entries of one job; ``items`` are packed control tuples."""

    job: str
    keys: tuple[str, str, str, str]
    items: list[bytes]
    job_name: str | None
    job_type: str | None


@dataclass(slots=True)
class _JobQueue:
    """One job's entries not yet settled, oldest first, each as ``(seq, packed item)``."""

    job: str
    keys: tuple[str, str, str, str]
    items: deque[tuple[int, bytes]] = field(default_factory=deque)
    nbytes: int = 0
    next_seq: int = 1
    in_flight: int = 0  # number of items at the head that are being written
    job_name: str | None = None
    job_type: str | None = None
    dropped: int = 0  # dropped since the last marker was queued
    since: float = 0.0  # monotonic time the oldest unsent item arrived
    markers: set[int] = field(default_factory=set)  # seqs of queued drop markers (never dropped)


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
    def __init__(self, config: PublisherConfig, src: str, masker: Masker | None = None) -> None:
        self.config = config
        self.src = src
        self.masker = masker  # None: nothing to mask, and no masking call on any entry
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
        d = make_draft(
            job, msg, level=level, kind=kind, step=step, worker=worker, parent=parent, status=status,
            fields=fields, job_name=job_name, job_type=job_type, ts_ms=ts_ms,
            max_message_bytes=self.config.max_message_bytes, masker=self.masker,
        )  # fmt: skip
        with self.lock:
            q = self._queue_of(job, d.job_name, d.job_type)
            return self._enqueue(
                q, pack_item(d, self.src, q.next_seq), lambda seq: pack_item(d, self.src, seq)
            )

    def offer_line(self, origin: LineOrigin, level: int, msg: object, fields: dict[str, Any] | None) -> Offer:
        """``offer`` for a handle's log line, the hot path: the handle checked its identity once
        when it was made, and its packer packs the part that never changes once."""
        clean = check_fields(fields) if fields is not None else None
        masker = self.masker
        if masker is None:
            text = clip_message(msg, self.config.max_message_bytes)
            masked = 0
        else:  # masked before clipping: a clip never leaves half a secret
            raw, masked = masker.mask_text(msg if type(msg) is str else as_text(msg))
            if clean is not None:
                clean, in_fields = masker.mask_value(clean)
                masked += in_fields
            text = clip_message(raw, self.config.max_message_bytes)
        ts_ms = time.time_ns() // 1_000_000
        pack = origin.packer(self.src).pack
        with self.lock:
            q = self._queue_of(origin.job, origin.job_name, origin.job_type)
            item = pack(ts_ms, level, text, q.next_seq, clean, masked)
            return self._enqueue(q, item, lambda seq: pack(ts_ms, level, text, seq, clean, masked))

    def _queue_of(self, job: str, job_name: str | None, job_type: str | None) -> _JobQueue:
        """The job's queue, named as its newest entry names the job. Called under the lock."""
        q = self._queues.get(job) or self._new_queue(job)
        if job_name:
            q.job_name = job_name
        if job_type:
            q.job_type = job_type
        return q

    def _enqueue(self, q: _JobQueue, item: bytes, repack: Callable[[int], bytes]) -> Offer:
        """Apply the overflow policy to one packed entry; ``repack`` numbers it anew when a drop
        marker takes its seq. Called under the lock."""
        if self._full(len(item)):
            if self.config.overflow == OVERFLOW_BLOCK:
                return Offer.FULL
            if not self._make_room(q, len(item)):
                q.dropped += 1
                self.dropped += 1
                return Offer.DROPPED
        elif q.dropped:  # there is room again: say what was lost before what comes next
            self._queue_marker(q)
            item = repack(q.next_seq)
        self._append(q, item)
        return Offer.QUEUED

    def resume(self, job: str, last_stored_seq: int) -> None:
        """Continue this src's numbering after what Redis already holds (a restarted publisher
        with a fixed ``src``), so its new entries are not mistaken for retries."""
        with self.lock:
            q = self._queues.get(job) or self._new_queue(job)
            q.next_seq = max(q.next_seq, last_stored_seq + 1)

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
                seq, dropped = victim.items[index]
                if seq in victim.markers:  # a marker carries counts: never drop it
                    index += 1
                    continue
                del victim.items[index]
                victim.nbytes -= len(dropped)
                self.entries -= 1
                self.nbytes -= len(dropped)
                victim.dropped += 1
                self.dropped += 1
            if len(victim.items) == victim.in_flight:
                self._ready.pop(victim.job, None)
            if not self._full(size):
                return True
        return False

    def _append(self, q: _JobQueue, item: bytes) -> None:
        if len(q.items) == q.in_flight:
            q.since = time.monotonic()
            if q.in_flight == 0:
                self._ready[q.job] = None
        q.items.append((q.next_seq, item))
        q.nbytes += len(item)
        q.next_seq += 1
        self.accepted += 1
        self.entries += 1
        self.nbytes += len(item)

    def _queue_marker(self, q: _JobQueue) -> None:
        """The visible trace of a drop: a job-level warning with the exact count, exempt from limits."""
        n, q.dropped = q.dropped, 0
        policy = self.config.overflow
        msg = f"dropped {n} entries: publisher {self.src} buffer was full (overflow policy {policy})"
        fields = {"dropped": n, "policy": policy}
        draft = Draft(_WARNING, KIND_LOG, msg, None, None, None, None, fields, q.job_name, q.job_type,
                      time.time_ns() // 1_000_000)  # fmt: skip
        q.markers.add(q.next_seq)
        self._append(q, pack_item(draft, self.src, q.next_seq))

    # ---- the sender ------------------------------------------------------------------------
    def take(self, now: float | None = None) -> tuple[list[Batch], float | None]:
        """Batches due now, and how long until the next one is due (``None``: nothing waits)."""
        now = time.monotonic() if now is None else now
        batches: list[Batch] = []
        wait: float | None = None
        with self.lock:
            for job in list(self._ready):
                if len(batches) >= _MAX_BATCHES_PER_ROUND:
                    return batches, 0.0  # more are due: come back at once
                q = self._queues[job]
                due_in = self._due_in(q, now)
                if due_in > 0:
                    wait = due_in if wait is None else min(wait, due_in)
                    continue
                del self._ready[job]
                batches.append(self._batch(q))
        return batches, wait

    def _due_in(self, q: _JobQueue, now: float) -> float:
        """Seconds until a job's batch is due: at once when full by entries or bytes, else after linger."""
        cfg = self.config
        if not cfg.linger_ms or len(q.items) >= cfg.max_batch_entries or q.nbytes >= cfg.max_batch_bytes:
            return 0.0
        return q.since + cfg.linger_ms / 1000 - now

    def _batch(self, q: _JobQueue) -> Batch:
        cfg = self.config
        items: list[bytes] = []
        size = 0
        for _, item in q.items:
            if items and (len(items) >= cfg.max_batch_entries or size + len(item) > cfg.max_batch_bytes):
                break
            items.append(item)
            size += len(item)
        q.in_flight = len(items)
        return Batch(q.job, q.keys, items, q.job_name, q.job_type)

    def settle(self, batch: Batch, result: WriteResult | None) -> None:
        """The batch is done: stored (``result``) or rejected for good (``None``); free its room."""
        n = len(batch.items)
        with self.lock:
            q = self._queues[batch.job]
            for _ in range(n):
                seq, item = q.items.popleft()
                q.nbytes -= len(item)
                self.nbytes -= len(item)
                q.markers.discard(seq)
            q.in_flight = 0
            self.entries -= n
            if result is None:
                self.rejected += n
            else:
                not_stored = result.refused + len(result.conflicts)
                self.duplicates += result.duplicates
                self.rejected += not_stored
                self.delivered += n - result.duplicates - not_stored
            if q.dropped:
                self._queue_marker(q)
            if q.items:
                q.since = time.monotonic()
                self._ready[q.job] = None

    def retry(self, batches: list[Batch]) -> None:
        """A write failed in a way worth retrying: the same entries go again, first in line."""
        with self.lock:
            self._requeue(self._queues[batch.job] for batch in batches)

    def release_unsettled(self) -> None:
        """A sender ended without settling what it took (cancelled, or killed by a bug: every
        write failure is caught): those entries go again, first in line, with the next sender.
        If the lost write did land, their seqs make the script skip them."""
        with self.lock:
            self._requeue(q for q in self._queues.values() if q.in_flight)

    def _requeue(self, queues: Iterable[_JobQueue]) -> None:
        """Their batches in flight are taken again by the next ``take``. Called under the lock."""
        for q in queues:
            q.in_flight = 0
            self._ready[q.job] = None

    # ---- waiting for delivery --------------------------------------------------------------
    def marks(self) -> dict[str, int]:
        """Per job, the last seq queued so far: flushing means settling everything up to it."""
        with self.lock:
            for q in self._queues.values():
                if q.dropped:
                    self._queue_marker(q)
            return {q.job: q.next_seq - 1 for q in self._queues.values() if q.items}

    def outstanding(self, marks: dict[str, int]) -> int:
        """How many entries up to the marks are still queued (dropped ones are not waited for)."""
        with self.lock:
            count = 0
            for job, mark in marks.items():
                queued = self._queues[job].items
                if queued and queued[-1][0] <= mark:  # the usual case: counted without a walk
                    count += len(queued)  # (a flush wakes once per write; a walk each was O(n^2))
                    continue
                for seq, _ in queued:
                    if seq > mark:
                        break
                    count += 1
            return count

    def backlog(self, job: str) -> Backlog:
        """Whether a producer of ``job`` should let the sender run before it queues more.

        A full batch waits: more entries now would only grow the buffer. If the sender has not
        taken it, the producer gives it a turn; if the batch before is being written, the
        producer waits for that write, and Redis works on one batch while the next one fills.
        Other ways measured worse in one process: yielding at every entry costs a select() per
        entry; yielding every 16 entries from 75 coroutines made each event loop turn 1,200
        entries long, so the sender saw its reply ~12 ms late; a busy thread kept the GIL from
        the sender for up to 5 ms after each send and each reply.
        """
        q = self._queues.get(job)
        if q is None or len(q.items) - q.in_flight < self.config.max_batch_entries:
            return Backlog.NONE
        return Backlog.BEHIND_WRITE if q.in_flight else Backlog.UNTAKEN

    def report(self) -> DeliveryReport:
        with self.lock:
            return DeliveryReport(
                self.accepted, self.delivered, self.duplicates, self.entries, self.dropped, self.rejected
            )
