"""End to end, fan-out 301 (DESIGN §9): publishers → Redis → gateway → 50 SSE clients, vs. a naive baseline.

Why this exists: the publisher and gateway benchmarks each measure one half. The reference workload
is the whole path at once: 301 workers in several publisher processes each log 1,000 entries as
fast as they can into one job (one step), while 50 SSE clients in processes of their own, 10 of
them slow readers, watch it. Every client must get all 301,000 entries plus the end event exactly
once and in stream order. The same workload then runs against the gateway and publisher people
usually write first (``benchmarks/baselines/``), in the same run, so "fast" has a reference.

Each variant gets a fresh private redis-server (AOF off) and its gateway as its own process; the
clients connect before anything is published (the job does not exist yet). Clients are
``sse_wire`` connections (raw TCP, no HTTP library). They check every event id (stream ids compared
as (ms, seq) integer pairs) but do not parse the JSON: fast clients take the ``t_ns`` publish
timestamp of every k-th entry (``--latency-every``) with a regex over the raw bytes.

Usage (from the repository root)::

    .venv/bin/python benchmarks/e2e.py                 # full size, ours then the baseline (time-boxed)
    .venv/bin/python benchmarks/e2e.py --no-baseline   # ours only
    .venv/bin/python benchmarks/e2e.py --smoke         # tiny sizes, both variants; what the test suite runs
    .venv/bin/python benchmarks/e2e.py --no-baseline --py-spy /tmp/e2e.txt   # profile our gateway

One JSON object goes to stdout; progress goes to stderr. Exit status 1 when any client of our
gateway lost, repeated or reordered an event (the baseline's exactness is reported, not enforced).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import multiprocessing
import os
import platform
import queue
import re
import secrets
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from array import array
from bisect import bisect_left
from collections.abc import Coroutine, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from multiprocessing.synchronize import Barrier, Event
from pathlib import Path
from typing import Any

import aiohttp
import redis
import redis.asyncio
from baselines.naive_publisher import NaiveJob
from common import (
    MESSAGE_BYTES,
    cpu_model,
    cpu_self_s,
    message,
    proc_cpu_s,
    proc_status_kib,
    py_spy,
    stop_process,
)
from common import percentile as nearest_rank
from sse_wire import STAMP_RE, Pace, SseConnection, last_event_is_end, open_all

from broker import Keyspace, Publisher, WorkerHandle
from gateway.cli.redis_server import RedisServer, free_port
from gateway.settings import GatewaySettings

ROOT = Path(__file__).resolve().parent.parent
NAIVE_GATEWAY = Path(__file__).resolve().parent / "baselines" / "naive_gateway.py"
JOB_NAME, JOB_TYPE, STEP = "Fan-out 301", "benchmark", "fanout"
ID_RE = re.compile(rb"\nid: (\d+)-(\d+)\n")  # every event frame has exactly one id line
SEQ_SPAN = 1 << 24  # key = (ms - first ms) * SEQ_SPAN + seq: one int64 per id, ordered like (ms, seq)
STOP_GRACE_S = 30.0  # for stopped client processes to send what they counted
GOAL_PUBLISH_EPS = 150_000
GOAL_RSS_KIB = 256 * 1024
GOAL_FACTOR = 5.0
REPORTED_SETTINGS = (
    "partitions", "write_chunk_bytes", "write_buffer_bytes", "ring_entries", "ring_bytes",
    "page_entries", "read_count", "write_timeout_s", "read_linger_ms", "event_loop",
)  # fmt: skip
GATEWAY_COUNTERS = {  # Prometheus name -> JSON key (gateway/metrics.py)
    "logbroker_entries_read_total": "entries_read",
    "logbroker_sse_entries_sent_total": "entries_sent",
    "logbroker_sse_pages_total": "pages_read",
    "logbroker_sse_page_hits_total": "pages_shared",
    "logbroker_sse_pushes_total": "pushes",
    "logbroker_sse_reaped_total": "reaped",
    "logbroker_dropped_entries_total": "dropped",
}
_MP = multiprocessing.get_context("spawn")  # fresh interpreters: nothing inherited from the parent


@dataclass(frozen=True, slots=True)
class Sizes:
    """Every size of one run, so --smoke and the full run differ only here."""

    workers: int = 301
    entries: int = 1000
    publisher_processes: int = 4
    clients: int = 50
    client_processes: int = 5
    slow_clients: int = 10
    slow_rate: float = 200.0
    slow_seconds: float = 10.0
    latency_every: int = 10
    timeout_s: float = 600.0
    time_box_factor: float = 5.5  # above GOAL_FACTOR: a baseline still running at the box is >= 5x slower
    time_box_min_s: float = 20.0
    time_box_max_s: float = 420.0


SMOKE = Sizes(12, 100, 2, 4, 2, 1, 200.0, 2.0, 1, 60.0, 3.0, 10.0, 20.0)


def log(msg: str) -> None:
    """Progress for the human; stdout is reserved for the one JSON result."""
    print(f"[e2e] {msg}", file=sys.stderr, flush=True)


def percentile(ordered: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted list (None when empty)."""
    return nearest_rank(ordered, q) if ordered else None


def share(total: int, parts: int, index: int) -> list[int]:
    """The items ``index, index + parts, ...`` of ``range(total)``: round-robin over processes."""
    return list(range(index, total, parts))


# --- SSE clients (run in child processes) ---------------------------------------------------------


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


class ClientPool:
    """``clients`` SSE connections to one job's stream, round-robin over ``client_processes``.

    Client i is slow when i < slow_clients, so the slow ones are spread over the processes too.
    """

    def __init__(self, base: str, job: str, sizes: Sizes) -> None:
        self.results: multiprocessing.Queue[Any] = _MP.Queue()
        self.stop = _MP.Event()
        url = f"{base}/v1/jobs/{job}/stream"
        self.procs = []
        for p in range(sizes.client_processes):
            indices = share(sizes.clients, sizes.client_processes, p)
            slow = [i < sizes.slow_clients for i in indices]
            spec = ClientSpec(indices, slow, sizes.latency_every, sizes.slow_rate, sizes.slow_seconds)
            proc = _MP.Process(target=client_main, args=(url, spec, self.stop, self.results), daemon=True)
            self.procs.append(proc)

    def __enter__(self) -> ClientPool:
        for proc in self.procs:
            proc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Children exit on their own after reporting; stragglers (errors) are killed."""
        self.stop.set()
        for proc in self.procs:
            proc.join(timeout=5 if exc[0] is None else 0.5)
            if proc.is_alive():
                proc.kill()
                proc.join()

    def collect(self, deadline: float) -> tuple[list[ClientProcReport], bool]:
        """One report per process by ``deadline``; past it, stop the clients and take what they have.

        Returns the reports and whether the deadline was hit.
        """
        reports: list[ClientProcReport] = []
        stopped = False
        while len(reports) < len(self.procs):
            try:
                item = self.results.get(timeout=max(0.05, deadline - time.monotonic()))
            except queue.Empty:
                if stopped:
                    raise RuntimeError("client processes did not report after being stopped") from None
                log("   time box reached: stopping the clients")
                stopped, deadline = True, time.monotonic() + STOP_GRACE_S
                self.stop.set()
                continue
            if isinstance(item, str):
                raise RuntimeError(f"client process failed: {item}")
            reports.append(item)
        return reports, stopped


# --- publishers (run in child processes) ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PubResult:
    """One publisher process: what it published, when (system-wide monotonic), at what CPU cost."""

    published: int
    pending: int
    start: float
    end: float
    cpu_s: float


def worker_name(w: int) -> str:
    return f"w-{w:03d}"


async def log_ours(worker: WorkerHandle[Any], n: int) -> None:
    """One worker logging as fast as it can, each entry stamped with its publish time."""
    for i in range(n):
        await worker.info(message(i), t_ns=time.time_ns())


async def log_naive(worker: Any, n: int) -> None:
    """The same worker loop through the naive publisher (one round trip per entry)."""
    for i in range(n):
        await worker.info(message(i), t_ns=time.time_ns())


async def timed(barrier: Barrier, coros: list[Coroutine[Any, Any, None]]) -> tuple[float, float]:
    """Wait for everyone at the barrier, then run all workers concurrently; (start, cpu at start)."""
    barrier.wait()  # blocking on purpose: nothing else runs in this loop yet
    start, cpu = time.monotonic(), cpu_self_s()
    await asyncio.gather(*coros)
    return start, cpu


async def publish_ours(url: str, job: str, workers: list[int], n: int, barrier: Barrier) -> PubResult:
    """logbroker's async Publisher: one per process, one coroutine per worker."""
    async with Publisher(url) as pub:
        step = pub.job(job, name=JOB_NAME, type=JOB_TYPE).step(STEP)
        handles = [step.worker(worker_name(w)) for w in workers]
        start, cpu = await timed(barrier, [log_ours(h, n) for h in handles])
        report = await pub.flush()
        end = time.monotonic()
    return PubResult(len(workers) * n, report.pending, start, end, cpu_self_s() - cpu)


async def publish_naive(url: str, job: str, workers: list[int], n: int, barrier: Barrier) -> PubResult:
    """The naive publisher, same layout: one client (connection pool) per process."""
    client = redis.asyncio.Redis.from_url(url)
    try:
        await client.ping()
        naive = NaiveJob(client, job, JOB_NAME, JOB_TYPE, f"naive-{os.getpid()}")
        handles = [naive.worker(STEP, worker_name(w)) for w in workers]
        start, cpu = await timed(barrier, [log_naive(h, n) for h in handles])
        end = time.monotonic()
    finally:
        await client.aclose()
    return PubResult(len(workers) * n, 0, start, end, cpu_self_s() - cpu)


def publisher_main(
    kind: str, url: str, job: str, workers: list[int], n: int, barrier: Barrier,
    results: multiprocessing.Queue[Any],
) -> None:  # fmt: skip
    """Entry point of one publisher process; errors are sent back instead of dying silently."""
    publish = publish_ours if kind == "ours" else publish_naive
    try:
        result: PubResult | str = asyncio.run(publish(url, job, workers, n, barrier))
    except Exception as e:
        barrier.abort()
        result = f"{type(e).__name__}: {e}"
    results.put(result)


class PublisherPool:
    """``workers`` workers round-robin over ``publisher_processes`` processes, released together."""

    def __init__(self, kind: str, url: str, job: str, sizes: Sizes) -> None:
        procs = sizes.publisher_processes
        self.results: multiprocessing.Queue[Any] = _MP.Queue()
        self.barrier = _MP.Barrier(procs + 1)  # + this process, which takes the start time
        self.procs = []
        for p in range(procs):
            args = (kind, url, job, share(sizes.workers, procs, p), sizes.entries, self.barrier, self.results)
            self.procs.append(_MP.Process(target=publisher_main, args=args, daemon=True))

    def __enter__(self) -> PublisherPool:
        for proc in self.procs:
            proc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            proc.join(timeout=5 if exc[0] is None else 0.5)
            if proc.is_alive():
                proc.kill()
                proc.join()

    def release(self) -> float:
        """Pass the barrier with the publishers (they have connected); the run's time zero."""
        self.barrier.wait(timeout=120)
        return time.monotonic()

    def collect(self, deadline: float) -> list[PubResult] | None:
        """Every process's result, or None when the deadline passes first (the pool kills them)."""
        out: list[PubResult] = []
        for _ in self.procs:
            try:
                item = self.results.get(timeout=max(0.05, deadline - time.monotonic()))
            except queue.Empty:
                return None
            if isinstance(item, str):
                raise RuntimeError(f"publisher process failed: {item}")
            out.append(item)
        return out


async def end_ours(url: str, job: str) -> None:
    """The end entry through logbroker's publisher (the write script adds the job's totals)."""
    async with Publisher(url) as pub:
        await pub.job(job, name=JOB_NAME, type=JOB_TYPE).end("completed")
        report = await pub.flush()
    if report.pending:
        raise RuntimeError("the end entry was not delivered")


async def end_naive(url: str, job: str) -> None:
    """The end entry through the naive publisher."""
    client = redis.asyncio.Redis.from_url(url)
    try:
        await NaiveJob(client, job, JOB_NAME, JOB_TYPE, "naive-main").end("completed")
    finally:
        await client.aclose()


# --- the gateway process --------------------------------------------------------------------------


class GatewayProc:
    """A gateway (ours or the naive one) as a child process, with the /proc readings we need."""

    def __init__(self, cmd: list[str], port: int, log_path: Path) -> None:
        self.cmd = cmd
        self.port = port
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout_s: float = 30.0) -> None:
        """Start and wait for /readyz; a gateway that dies while starting fails with its log."""
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(self.cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            if self.clients() is not None:
                return
            time.sleep(0.05)
        raise TimeoutError(f"gateway did not become ready: {self.log_tail()}")

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def check_alive(self) -> None:
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError(f"gateway exited: {self.log_tail()}")

    def clients(self) -> int | None:
        """Open streams as /readyz reports them; None while it does not answer 200."""
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as resp:
                return int(json.loads(resp.read()).get("clients", 0))
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def metrics(self) -> dict[str, float] | None:
        """The gateway's own counters (GET /metrics, ours only): how it did the work, e.g. pages read."""
        try:
            with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as resp:
                text = resp.read().decode()
        except (urllib.error.URLError, OSError):
            return None
        values = {}
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name in GATEWAY_COUNTERS:
                values[GATEWAY_COUNTERS[name]] = float(value)
        return values

    def wait_for_clients(self, n: int, timeout_s: float = 120.0) -> None:
        """Until the gateway itself reports ``n`` streams, i.e. every client is subscribed."""
        deadline = time.monotonic() + timeout_s
        seen = None
        while time.monotonic() < deadline:
            self.check_alive()
            seen = self.clients()
            if seen == n:
                return
            time.sleep(0.1)
        raise TimeoutError(f"gateway reports {seen} clients, expected {n}")

    def stop(self) -> None:
        stop_process(self.process)

    def cpu_s(self) -> float:
        return proc_cpu_s(self.pid)

    def memory_kib(self, key: str = "VmRSS") -> int:
        return proc_status_kib(self.pid, key)


def gateway_cmd(variant: str, port: int, redis_url: str) -> list[str]:
    """``python -m gateway`` (ours, default settings from the environment) or the naive script."""
    target = ["-m", "gateway"] if variant == "ours" else [str(NAIVE_GATEWAY)]
    return [sys.executable, *target, "--port", str(port), "--redis-url", redis_url]


@contextmanager
def running_gateway(variant: str, redis_url: str, tmp: Path) -> Iterator[GatewayProc]:
    """A gateway that is stopped on every way out, errors included."""
    port = free_port()
    gw = GatewayProc(gateway_cmd(variant, port, redis_url), port, tmp / f"gateway-{variant}.log")
    try:
        gw.start()
        log(f"{variant}: gateway pid {gw.pid} on {gw.url}")
        yield gw
    finally:
        gw.stop()


class RssMonitor:
    """Polls the gateway's VmRSS every ``interval_s`` in a thread: the peak through the whole run."""

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.peak_kib = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-monitor", daemon=True)

    def __enter__(self) -> RssMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            try:
                rss = proc_status_kib(self.pid, "VmRSS")
            except (OSError, RuntimeError):
                return  # the gateway is gone
            self.peak_kib = max(self.peak_kib, rss)
            self.samples += 1
            if self._stop.wait(self.interval_s):
                return


# --- one variant ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Observed:
    """Everything one variant's run measured, before it is turned into JSON."""

    variant: str
    time_box_s: float | None
    t0: float = 0.0
    publishers: list[PubResult] | None = None
    end_published: bool = False
    clients: list[ClientSummary] = field(default_factory=list)
    clients_cpu_s: float = 0.0
    stopped: bool = False
    gateway_cpu_s: float = 0.0
    rss_peak_kib: int = 0
    rss_samples: int = 0
    vmhwm_kib: int = 0
    rss_start_kib: int = 0
    redis: dict[str, Any] = field(default_factory=dict)
    counters: dict[str, float] | None = None


def run_variant(variant: str, sizes: Sizes, time_box_s: float | None, spy: str | None) -> Observed:
    """One variant against its own redis-server; every process it starts is stopped on the way out."""
    obs = Observed(variant, time_box_s)
    job = f"e2e-{variant}-{secrets.token_hex(3)}"
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="logbroker-e2e-")))
        server = RedisServer(tmp / "redis", appendonly=False).start()
        stack.callback(server.stop)
        rc = redis.Redis.from_url(server.url)
        stack.callback(rc.close)
        gw = stack.enter_context(running_gateway(variant, server.url, tmp))
        obs.rss_start_kib = gw.memory_kib()
        rss = stack.enter_context(RssMonitor(gw.pid))
        log(f"{variant}: {sizes.clients} clients ({sizes.slow_clients} slow), {sizes.client_processes} procs")
        pool = stack.enter_context(ClientPool(gw.url, job, sizes))
        gw.wait_for_clients(sizes.clients)
        pubs = stack.enter_context(PublisherPool(variant, server.url, job, sizes))
        with py_spy(gw.pid, spy, rate=100, say=log):
            deliver(obs, sizes, gw, pubs, pool, server.url, job)
        obs.rss_peak_kib, obs.rss_samples = rss.peak_kib, rss.samples
        obs.vmhwm_kib = gw.memory_kib("VmHWM")
        obs.counters = gw.metrics() if variant == "ours" else None
        obs.redis = redis_state(rc, job)
    return obs


def deliver(
    obs: Observed, sizes: Sizes, gw: GatewayProc, pubs: PublisherPool, pool: ClientPool, url: str, job: str
) -> None:
    """Release the publishers, publish the end entry once they are done, wait for the clients."""
    cpu = gw.cpu_s()
    log(
        f"{obs.variant}: {sizes.workers} workers x {sizes.entries} entries, {sizes.publisher_processes} procs"
    )
    obs.t0 = pubs.release()
    deadline = obs.t0 + (obs.time_box_s or sizes.timeout_s)
    obs.publishers = pubs.collect(deadline)
    if obs.publishers is not None and time.monotonic() < deadline:
        asyncio.run(end_ours(url, job) if obs.variant == "ours" else end_naive(url, job))
        obs.end_published = True
        log(f"{obs.variant}: published in {time.monotonic() - obs.t0:.2f}s")
    else:
        log(f"{obs.variant}: publishers did not finish within the time box")
    reports, obs.stopped = pool.collect(deadline)
    obs.gateway_cpu_s = gw.cpu_s() - cpu
    obs.clients = sorted((c for r in reports for c in r.clients), key=lambda c: c.index)
    obs.clients_cpu_s = sum(r.cpu_s for r in reports)


def redis_state(rc: redis.Redis, job: str) -> dict[str, Any]:
    """The stream as it ended up, and the server's memory and CPU: read before the server stops."""
    key = Keyspace().stream(job)
    last: Any = rc.xrevrange(key, count=1)
    memory, cpu = rc.info("memory"), rc.info("cpu")
    return {
        "xlen": int(rc.xlen(key)),
        "last_id": last[0][0].decode() if last else None,
        "used_memory": int(memory["used_memory"]),
        "used_memory_human": memory["used_memory_human"],
        "cpu_s": round(float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]), 2),
        "version": rc.info("server").get("redis_version"),
    }


# --- results --------------------------------------------------------------------------------------


def publish_result(obs: Observed, sizes: Sizes) -> dict[str, Any]:
    """Rate = all entries / (first process start .. last flush); per process over its own window."""
    if obs.publishers is None:
        elapsed = obs.time_box_s or sizes.timeout_s
        reached = max(0, obs.redis["xlen"])
        return {"completed": False, "entries_reached": reached, "eps": round(reached / elapsed)}
    pubs = obs.publishers
    wall = max(p.end for p in pubs) - min(p.start for p in pubs)
    per_proc = [round(p.published / (p.end - p.start)) for p in pubs]
    return {
        "completed": True,
        "processes": len(pubs),
        "workers": sizes.workers,
        "entries": sum(p.published for p in pubs),
        "wall_s": round(wall, 3),
        "eps": round(sum(p.published for p in pubs) / wall),
        "eps_per_process": per_proc,
        "eps_per_process_min": min(per_proc),
        "pending_after_flush": sum(p.pending for p in pubs),
        "publishers_cpu_s": round(sum(p.cpu_s for p in pubs), 2),
    }


def client_row(c: ClientSummary, expected: int, last_id: str | None, t0: float) -> dict[str, Any]:
    """One client's line: counts, and whether it got exactly the stream, in order, through the end."""
    exact = (
        c.received == c.unique == expected and c.duplicates == 0 and c.out_of_order == 0
        and c.ended_at is not None and c.last_id == last_id and c.error is None
    )  # fmt: skip
    return {
        "client": c.index,
        "slow": c.slow,
        "received": c.received,
        "unique": c.unique,
        "missing": expected - c.unique,
        "duplicates": c.duplicates,
        "out_of_order": c.out_of_order,
        "done_s": None if c.ended_at is None else round(c.ended_at - t0, 3),
        "error": c.error,
        "exact": exact,
    }


def delivery_result(obs: Observed, sizes: Sizes, expected: int) -> dict[str, Any]:
    """Times from time zero (publishers released) until the last fast / last of all clients is done."""
    fast = [c for c in obs.clients if not c.slow]
    slow = [c for c in obs.clients if c.slow]

    def done(group: list[ClientSummary]) -> float | None:
        if not group or any(c.ended_at is None for c in group):
            return None
        return round(max(c.ended_at or 0.0 for c in group) - obs.t0, 3)

    deliveries = sum(c.received for c in obs.clients)
    all_done = done(obs.clients)
    elapsed = all_done or (obs.time_box_s or sizes.timeout_s)
    return {
        "completed": all_done is not None,
        "events_per_client": expected,
        "fast_done_s": done(fast),
        "slow_done_s": done(slow),
        "all_done_s": all_done,
        "deliveries": deliveries,
        "min_received": min((c.received for c in obs.clients), default=0),  # what a stopped run reached
        "max_received": max((c.received for c in obs.clients), default=0),
        "deliveries_per_s": round(deliveries / elapsed),
        "deliveries_per_gateway_cpu_s": round(deliveries / obs.gateway_cpu_s) if obs.gateway_cpu_s else None,
    }


def latency_result(obs: Observed, sizes: Sizes) -> dict[str, Any]:
    """p50/p99/max over the sampled events of the fast clients (nearest rank)."""
    samples = sorted(ms for c in obs.clients if not c.slow for ms in c.latencies_ms)
    p50, p99 = percentile(samples, 50), percentile(samples, 99)
    return {
        "every_kth_entry": sizes.latency_every,
        "samples": len(samples),
        "p50_ms": None if p50 is None else round(p50, 1),
        "p99_ms": None if p99 is None else round(p99, 1),
        "max_ms": round(samples[-1], 1) if samples else None,
    }


def variant_result(obs: Observed, sizes: Sizes) -> dict[str, Any]:
    """The JSON of one variant (see benchmarks/README.md, section e2e.py)."""
    expected = obs.redis["xlen"]  # every entry the stream holds, end entry included
    rows = [client_row(c, expected, obs.redis["last_id"], obs.t0) for c in obs.clients]
    delivery = delivery_result(obs, sizes, expected)
    return {
        "completed": obs.end_published and delivery["completed"] and not obs.stopped,
        "time_box_s": None if obs.time_box_s is None else round(obs.time_box_s, 1),
        "publish": publish_result(obs, sizes),
        "delivery": delivery,
        "latency_fast_clients": latency_result(obs, sizes),
        "gateway": {
            "rss_start_kib": obs.rss_start_kib,
            "rss_peak_kib": obs.rss_peak_kib,
            "vmhwm_kib": obs.vmhwm_kib,
            "rss_samples": obs.rss_samples,
            "cpu_s": round(obs.gateway_cpu_s, 2),
            "counters": obs.counters,
        },
        "clients_cpu_s": round(obs.clients_cpu_s, 2),
        "redis": obs.redis,
        "exact": bool(rows) and obs.end_published and all(r["exact"] for r in rows),
        "totals": {
            "missing": sum(r["missing"] for r in rows),
            "duplicates": sum(r["duplicates"] for r in rows),
            "out_of_order": sum(r["out_of_order"] for r in rows),
        },
        "clients": rows,
    }


# --- ours vs. the baseline ------------------------------------------------------------------------

# (name, where in a variant's JSON, higher is better, counts for the 5x goal)
METRICS: tuple[tuple[str, tuple[str, str], bool, bool], ...] = (
    ("publish_eps", ("publish", "eps"), True, True),
    ("fast_done_s", ("delivery", "fast_done_s"), False, True),
    ("all_done_s", ("delivery", "all_done_s"), False, True),
    ("deliveries_per_gateway_cpu_s", ("delivery", "deliveries_per_gateway_cpu_s"), True, True),
    ("latency_p50_ms", ("latency_fast_clients", "p50_ms"), False, True),
    ("latency_p99_ms", ("latency_fast_clients", "p99_ms"), False, True),
    ("gateway_rss_peak_kib", ("gateway", "rss_peak_kib"), False, True),
    ("redis_used_memory", ("redis", "used_memory"), False, False),
)


# rates over what a stopped baseline did manage, and Redis memory (all entries were stored by then)
EXACT_EVEN_IF_STOPPED = frozenset({"publish_eps", "deliveries_per_gateway_cpu_s", "redis_used_memory"})


def compare(ours: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """Each metric: ours, baseline, ours/baseline, and ``factor`` = how many times better ours is.

    When the baseline was stopped by the time box, its times are at least the time box, and its
    latency, RSS and partial rates are what it had reached: the factor is then a lower bound
    (``factor_is_lower_bound``), except for ``EXACT_EVEN_IF_STOPPED``.
    """
    out: dict[str, Any] = {}
    for name, (part, key), higher, _ in METRICS:
        mine, theirs = ours[part][key], base[part][key]
        bound = not base["completed"]
        if theirs is None and key.endswith("_done_s") and bound:
            theirs = base["time_box_s"]  # not done within the box: at least that long
        factor = None
        if mine and theirs:
            factor = round(mine / theirs if higher else theirs / mine, 2)
        out[name] = {
            "ours": mine,
            "baseline": theirs,
            "ours_over_baseline": round(mine / theirs, 4) if mine is not None and theirs else None,
            "factor": factor,
            "factor_is_lower_bound": bound and name not in EXACT_EVEN_IF_STOPPED,
        }
    return out


def five_x_goal(ratios: dict[str, Any], baseline_completed: bool) -> tuple[bool | None, list[str]]:
    """Met when every counted metric is >= 5x; a lower bound below 5x is undecided, not a miss."""
    undecided: list[str] = []
    verdicts: list[bool] = []
    for name, _, _, counted in METRICS:
        r = ratios[name]
        if not counted:
            continue
        factor = r["factor"]
        if factor is not None and factor >= GOAL_FACTOR:
            verdicts.append(True)
        elif factor is None or (r["factor_is_lower_bound"] and not baseline_completed):
            undecided.append(name)
        else:
            verdicts.append(False)
    return (all(verdicts) if verdicts else None), undecided


def goals(ours: dict[str, Any], ratios: dict[str, Any] | None, base_done: bool) -> dict[str, Any]:
    """The issue's goals this benchmark can decide, as booleans."""
    pub = ours["publish"]
    rss = max(ours["gateway"]["rss_peak_kib"], ours["gateway"]["vmhwm_kib"])
    five, undecided = five_x_goal(ratios, base_done) if ratios is not None else (None, [])
    return {
        "zero_lost_duplicated_out_of_order_every_client": ours["exact"],
        "publish_eps_per_process>=150000": bool(pub.get("eps_per_process_min", 0) >= GOAL_PUBLISH_EPS),
        "gateway_rss<=256MiB": rss <= GOAL_RSS_KIB,
        "every_metric>=5x_baseline": five,
        "every_metric>=5x_baseline_undecided": undecided,
    }


# --- the run --------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the numbers depend on, so a result is never read without its context."""
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "mem_total_kib": proc_meminfo_kib("MemTotal"),
        "loadavg_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "redis_py": redis.__version__,
    }


def proc_meminfo_kib(key: str) -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def time_box(sizes: Sizes, ours: dict[str, Any]) -> float:
    """The baseline gets ``factor`` x our total time, within [min, max] seconds."""
    ours_s = ours["delivery"]["all_done_s"] or sizes.timeout_s
    return min(sizes.time_box_max_s, max(sizes.time_box_min_s, sizes.time_box_factor * ours_s))


def run_all(sizes: Sizes, baseline: bool, spy: str | None, argv: list[str]) -> dict[str, Any]:
    """Ours first (its time sets the baseline's time box), then the naive baseline."""
    host = machine()
    ours = variant_result(run_variant("ours", sizes, None, spy), sizes)
    log(f"ours: fast clients done in {ours['delivery']['fast_done_s']}s, exact={ours['exact']}")
    base = None
    if baseline:
        box = time_box(sizes, ours)
        log(f"baseline: time box {box:.0f}s")
        base = variant_result(run_variant("naive", sizes, box, None), sizes)
        log(f"baseline: completed={base['completed']}, exact={base['exact']}")
    ratios = compare(ours, base) if base is not None else None
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", "benchmarks/e2e.py", *argv]),
        "machine": host,
        "sizes": asdict(sizes),
        "message_bytes": MESSAGE_BYTES,
        "gateway_settings": effective_settings(),
        "ours": ours,
        "baseline": base,
        "ours_vs_baseline": ratios,
        "goals": goals(ours, ratios, bool(base and base["completed"])),
        "exact": ours["exact"],
    }


def effective_settings() -> dict[str, Any]:
    """The settings our gateway ran with: its own parser over the same environment."""
    settings = GatewaySettings()  # type: ignore[call-arg]  # pydantic-settings: fields come from the env
    return {name: getattr(settings, name) for name in REPORTED_SETTINGS}


def parse_args(argv: list[str]) -> tuple[Sizes, bool, str | None]:
    """Sizes from --smoke or the defaults, each overridable by its own option."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    d = Sizes()
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (< 40 s, both variants)")
    parser.add_argument("--workers", type=int, help=f"workers, all in one step ({d.workers})")
    parser.add_argument("--entries", type=int, help=f"entries per worker ({d.entries})")
    parser.add_argument("--publisher-processes", type=int, help=f"({d.publisher_processes})")
    parser.add_argument("--clients", type=int, help=f"SSE clients ({d.clients})")
    parser.add_argument("--client-processes", type=int, help=f"({d.client_processes})")
    parser.add_argument("--slow-clients", type=int, help=f"of which slow readers ({d.slow_clients})")
    parser.add_argument("--slow-rate", type=float, help=f"slow readers' events/s ({d.slow_rate})")
    parser.add_argument("--slow-seconds", type=float, help=f"how long they read slowly ({d.slow_seconds})")
    parser.add_argument("--latency-every", type=int, help=f"time every k-th entry ({d.latency_every})")
    parser.add_argument("--time-box-max-s", type=float, help=f"baseline's longest run ({d.time_box_max_s})")
    parser.add_argument("--timeout-s", type=float, help=f"our variant's longest run ({d.timeout_s})")
    parser.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                        help="also run the naive baseline (default: yes)")  # fmt: skip
    parser.add_argument("--py-spy", metavar="OUT", help="record our gateway with py-spy while it delivers")
    args = parser.parse_args(argv)
    given = {k: v for k, v in vars(args).items() if k in Sizes.__dataclass_fields__ and v is not None}
    sizes = Sizes(**{**asdict(SMOKE if args.smoke else d), **given})
    problem = check_sizes(sizes)
    if problem:
        parser.error(problem)
    return sizes, args.baseline, args.py_spy


def check_sizes(s: Sizes) -> str | None:
    """A message for the first impossible combination, else None."""
    if min(s.workers, s.entries, s.publisher_processes, s.clients, s.client_processes, s.latency_every) < 1:
        return "sizes must be >= 1"
    if s.publisher_processes > s.workers or s.client_processes > s.clients:
        return "more processes than workers or clients"
    if min(s.timeout_s, s.time_box_max_s) <= 0:
        return "--timeout-s and --time-box-max-s must be positive"
    if not 0 <= s.slow_clients <= s.clients or s.slow_rate <= 0 or s.slow_seconds < 0:
        return "--slow-clients must be 0..--clients, --slow-rate > 0, --slow-seconds >= 0"
    return None


def main(argv: list[str] | None = None) -> int:
    """Exit status 1 when any client of our gateway was not exact, so CI notices without the JSON."""
    args = sys.argv[1:] if argv is None else argv
    sizes, baseline, spy = parse_args(args)
    result = run_all(sizes, baseline, spy, args)
    print(json.dumps(result, indent=2))
    return 0 if result["exact"] else 1


if __name__ == "__main__":
    sys.exit(main())
