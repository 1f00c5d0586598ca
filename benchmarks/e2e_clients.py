"""``e2e.py``'s SSE clients, the side that runs in the client processes: each connection checks
every event id (stream ids compared as (ms, seq) integer pairs) without parsing the JSON, fast
connections take the ``t_ns`` publish stamp of every k-th entry, and slow ones read at a pace.

``e2e.py`` starts the processes (``client_main``) and reads their reports; nothing here imports it.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import re
import time
from array import array
from bisect import bisect_left
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event
from typing import Any

from harness import cpu_self_s
from sse_wire import STAMP_RE, Pace, SseConnection, last_event_is_end, open_all

ID_RE = re.compile(rb"\nid: (\d+)-(\d+)\n")  # every event frame has exactly one id line
SEQ_SPAN = 1 << 24  # key = (ms - first ms) * SEQ_SPAN + seq: one int64 per id, ordered like (ms, seq)


@dataclass(slots=True)
class Tally:
    """One SSE connection's check of every event id, kept cheap: regex over complete events only
    (the raw body ``sse_wire`` hands over, chunked framing included: see that module).

    Ids arriving in increasing order are appended to ``seen`` (an int64 array, ordered). An id at or
    below the last one is a duplicate if ``seen`` holds it (binary search), else out of order.
    """

    index: int
    slow: bool
    every: int
    received: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    first_at: float | None = None
    ended_at: float | None = None
    error: str | None = None
    base_ms: int = 0
    last: int = -1
    stamped: int = 0
    seen: array[int] = field(default_factory=lambda: array("q"))
    latencies_ms: array[float] = field(default_factory=lambda: array("d"))
    partial: bytes = b""

    def feed(self, chunk: bytes) -> bool:
        """Check the complete events in (partial + chunk); True once the end event has arrived."""
        now, now_ns = time.monotonic(), time.time_ns()
        buf = self.partial + chunk if self.partial else chunk
        cut = buf.rfind(b"\n\n")
        if cut < 0:
            self.partial = buf
            return False
        end = cut + 2
        self.partial = buf[cut + 1 :]  # keep the "\n" that precedes the next event's "id:" line
        ids = ID_RE.findall(buf, 0, end)
        if ids:
            if self.first_at is None:
                self.first_at, self.base_ms = now, int(ids[0][0])
            self._check(ids)
            if not self.slow:
                self._stamp(STAMP_RE.findall(buf, 0, end), now_ns)
        if last_event_is_end(buf, end):
            self.ended_at = now
            return True
        return False

    def _check(self, ids: list[tuple[bytes, bytes]]) -> None:
        base, last, seen = self.base_ms, self.last, self.seen
        prev, ms_key = b"", 0
        for ms, seq in ids:
            if ms != prev:  # runs of ids share their ms: convert it once per run
                prev, ms_key = ms, (int(ms) - base) * SEQ_SPAN
            key = ms_key + int(seq)
            if key > last:
                seen.append(key)
                last = key
            else:
                self._regress(key)
        self.last = last
        self.received += len(ids)

    def _regress(self, key: int) -> None:
        i = bisect_left(self.seen, key)
        if i < len(self.seen) and self.seen[i] == key:
            self.duplicates += 1
        else:
            self.out_of_order += 1
            self.seen.insert(i, key)

    def _stamp(self, stamps: list[bytes], now_ns: int) -> None:
        """Publish→receive latency of every k-th entry (receive time is taken once per chunk)."""
        first = (-self.stamped) % self.every
        self.stamped += len(stamps)
        lat = self.latencies_ms
        for t in stamps[first :: self.every]:
            lat.append((now_ns - int(t)) / 1e6)

    def summary(self) -> ClientSummary:
        last_id = None if self.last < 0 else f"{self.base_ms + self.last // SEQ_SPAN}-{self.last % SEQ_SPAN}"
        return ClientSummary(
            self.index, self.slow, self.received, len(self.seen), self.duplicates, self.out_of_order,
            self.first_at, self.ended_at, last_id, self.latencies_ms, self.error,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class ClientSummary:
    """What a client process sends back per connection (no per-id history: that stays in the child)."""

    index: int
    slow: bool
    received: int
    unique: int
    duplicates: int
    out_of_order: int
    first_at: float | None
    ended_at: float | None
    last_id: str | None
    latencies_ms: array[float]
    error: str | None


@dataclass(frozen=True, slots=True)
class ClientProcReport:
    """One client process: its connections, and its CPU seconds once they were all open."""

    clients: list[ClientSummary]
    cpu_s: float


def slow_pace(tally: Tally, rate: float, seconds: float) -> Pace:
    """A slow reader's pace, asked after each 4 KiB piece (``sse_wire.PACED_READ_BYTES``): wait until
    at most ``rate`` events/s have been taken since the first event; full speed ``seconds`` after it.

    Meanwhile the connection does not read its socket (``pause_reading``), so the data waits in the
    kernel's buffers and the gateway really sees a slow reader (TCP backpressure), not a fast one
    whose data piles up in this process.
    """

    def pause_s() -> float | None:
        if tally.first_at is None:
            return 0.0
        now, until = time.monotonic(), tally.first_at + seconds
        if now >= until:
            return None  # the slow phase is over: the connection stops asking
        return min(tally.first_at + tally.received / rate, until) - now

    return pause_s


async def follow(conn: SseConnection, tally: Tally) -> None:
    """One client until its end event; a failure is recorded on the tally, not raised."""
    try:
        await conn.done
    except (RuntimeError, OSError) as e:
        tally.error = f"{type(e).__name__}: {e}"
    finally:
        conn.close()


async def watch_all(url: str, spec: ClientSpec, stop: Event) -> ClientProcReport:
    """Open every connection, follow them all; the parent's ``stop`` cuts a time-boxed run short."""
    tallies = [Tally(i, slow, spec.every) for i, slow in zip(spec.indices, spec.slow, strict=True)]
    paces = [slow_pace(t, spec.slow_rate, spec.slow_seconds) if t.slow else None for t in tallies]
    conns = await open_all([url] * len(tallies), tallies, paces)
    cpu = cpu_self_s()
    tasks = [asyncio.create_task(follow(c, t)) for c, t in zip(conns, tallies, strict=True)]
    await until_done_or_stopped(tasks, stop)
    return ClientProcReport([t.summary() for t in tallies], cpu_self_s() - cpu)


async def until_done_or_stopped(tasks: list[asyncio.Task[None]], stop: Event) -> None:
    """Poll the parent's stop event (a cheap flag) while the readers run."""
    pending = set(tasks)
    while pending:
        _, pending = await asyncio.wait(pending, timeout=0.2)
        if pending and stop.is_set():
            for task in pending:
                task.cancel()
            await asyncio.wait(pending)
            return


@dataclass(frozen=True, slots=True)
class ClientSpec:
    """The connections of one client process: global indices, which are slow, how to measure."""

    indices: list[int]
    slow: list[bool]
    every: int
    slow_rate: float
    slow_seconds: float


def client_main(url: str, spec: ClientSpec, stop: Event, results: multiprocessing.Queue[Any]) -> None:
    """Entry point of one client process; errors are sent back instead of dying silently."""
    try:
        report: ClientProcReport | str = asyncio.run(watch_all(url, spec, stop))
    except Exception as e:
        report = f"{type(e).__name__}: {e}"
    results.put(report)
