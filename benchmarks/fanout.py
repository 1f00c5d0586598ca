"""Fan-out of one gateway process: deliveries/s, publish→receive latency, memory per slow client.

Why this exists: the gateway's goals (>= 1,000,000 deliveries/s per gateway process; p99 <= 50 ms
publish→receive at 10,000 entries/s to 100 clients; <= 64 KiB of gateway memory per slow client)
are claims about a real ``python -m gateway`` process talking to real SSE clients over TCP, so this
measures exactly that: a private redis-server, the gateway as its own process, clients in processes
of their own, and a publisher in this process.

Every measurement checks that every (normal) client received exactly every event, so a fast run
that loses or repeats events reports ``"exact": false`` (and exit status 1) instead of a good number.

Usage (from the repository root)::

    .venv/bin/python benchmarks/fanout.py            # full size, about a minute
    .venv/bin/python benchmarks/fanout.py --smoke    # seconds; what the test suite runs
    .venv/bin/python benchmarks/fanout.py --py-spy /tmp/gw.svg   # profile the gateway in part 1
    .venv/bin/python benchmarks/fanout.py --latency-clients python   # part 2 with the Python clients

Part 2's clients are the C ones of ``latency_c.py`` where a C compiler is found (``auto``): on two
cores the Python clients' own CPU (0.7 µs per event) is part of what they would measure.

One JSON object goes to stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import fcntl
import json
import multiprocessing
import os
import queue
import resource
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import time
import urllib.error
import urllib.request
from array import array
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import redis
from common import (
    MESSAGE_BYTES,
    cpu_self_s,
    log,
    machine_with_aiohttp,
    message,
    percentile,
    proc_cpu_s,
    proc_status_kib,
    py_spy,
    split,
    stop_process,
)
from sse_wire import ID_STAMP_RE, EventCounter, stream_all

from broker import Publisher, WorkerHandle
from gateway.cli.redis_server import RedisServer, free_port
from gateway.settings import GatewaySettings

ROOT = Path(__file__).resolve().parent.parent
SLOW_MESSAGE_BYTES = 1024
WORKERS = 8
SLOW_RCVBUF = 4096
CONNECT_BATCH = 100  # slow clients connected at a time, below aiohttp's listen backlog of 128
GOAL_DELIVERIES_PER_S = 1_000_000
GOAL_P99_MS = 50.0
GOAL_KIB_PER_SLOW_CLIENT = 64.0
SLOW_GATEWAY = {"write_timeout_s": 600}  # stalled clients must not be reaped while we measure them
REPORTED_SETTINGS = (
    "partitions", "heartbeat_s", "write_timeout_s", "write_chunk_bytes", "write_buffer_bytes",
    "max_clients", "ring_entries", "ring_bytes", "page_entries", "read_block_ms", "read_count",
    "read_linger_ms", "event_loop",
)  # fmt: skip
_MP = multiprocessing.get_context("spawn")  # fresh interpreters: nothing inherited from the parent


@dataclass(frozen=True, slots=True)
class Sizes:
    """Every size of one run, so --smoke and the full run differ only here."""

    clients: int = 100
    client_processes: int = 4
    entries: int = 50_000
    rate: int = 10_000
    seconds: float = 5.0
    parsing_clients: int = 10
    slow_clients: int = 1000
    normal_clients: int = 5
    slow_entries: int = 20_000
    settle_s: float = 3.0
    timeout_s: float = 300.0


# part 3 of the smoke run still sends each slow client ~10 MB: more than Linux's 4 MB autotuned
# send buffer (tcp_wmem max), so the clients really stall the gateway rather than the kernel
SMOKE = Sizes(8, 2, 2_000, 10_000, 1.0, 2, 50, 2, 8_000, 1.0, 60.0)


# --- SSE clients (run in child processes) -----------------------------------------------------------


@dataclass(slots=True)
class Tally(EventCounter):
    """One SSE connection's count (``EventCounter``: a byte search per chunk, no SSE parsing).

    ``parse`` connections also time every event: one regex (``ID_STAMP_RE``) over the complete events
    of each chunk takes their ``t_ns`` field, against the receive time of the chunk (taken once),
    and the millisecond part of their id, which Redis stamped when it stored the entry: the split
    tells the publisher's share of the latency from the gateway's and the clients'.
    No JSON is decoded; the incomplete last event waits in ``partial`` for the next chunk.
    """

    parse: bool = False
    latencies_ms: array[float] = field(default_factory=lambda: array("d"))
    stored_ms: array[float] = field(default_factory=lambda: array("d"))  # publish -> Redis id
    partial: bytes = b""

    def feed(self, chunk: bytes) -> bool:
        """Count one chunk (and time its events); True once the end event has arrived."""
        if self.parse:
            self._measure(chunk, time.time_ns())
        return EventCounter.feed(self, chunk)

    def _measure(self, chunk: bytes, now_ns: int) -> None:
        """Receive time minus the ``t_ns`` field of every complete event in (partial + chunk)."""
        buf = self.partial + chunk if self.partial else chunk
        cut = buf.rfind(b"\n\n")
        if cut < 0:
            self.partial = buf
            return
        self.partial = buf[cut + 2 :]
        for id_ms, t_ns in ID_STAMP_RE.findall(buf, 0, cut):
            self.latencies_ms.append((now_ns - int(t_ns)) / 1e6)
            self.stored_ms.append(int(id_ms) - int(t_ns) / 1e6)


@dataclass(frozen=True, slots=True)
class ProcReport:
    """What one client process sends back: its connections' tallies and its CPU time once connected."""

    tallies: list[Tally]
    cpu_s: float


async def _watch_all(url: str, conns: int, parsing: int, timeout_s: float) -> ProcReport:
    """Every connection until its end event; CPU counts once all are open (``sse_wire.stream_all``)."""
    tallies = [Tally(parse=i < parsing) for i in range(conns)]
    cpu = await stream_all([url] * conns, tallies, timeout_s)
    return ProcReport(tallies, cpu)


def client_main(
    url: str, conns: int, parsing: int, timeout_s: float, results: multiprocessing.Queue[Any]
) -> None:
    """Entry point of one client process; errors are sent back instead of dying silently."""
    try:
        report: ProcReport | str = asyncio.run(_watch_all(url, conns, parsing, timeout_s))
    except Exception as e:
        report = f"{type(e).__name__}: {e}"
    results.put(report)


class ClientPool:
    """``clients`` SSE connections to one job, spread over ``procs`` spawned processes."""

    def __init__(self, base: str, job: str, clients: int, procs: int, parsing: int, timeout_s: float) -> None:
        self.results: multiprocessing.Queue[Any] = _MP.Queue()
        self.timeout_s = timeout_s
        url = f"{base}/v1/jobs/{job}/stream"
        counts = split(clients, procs)
        parse_counts = split(parsing, procs)
        self.procs = [
            _MP.Process(target=client_main, args=(url, n, p, timeout_s, self.results), daemon=True)
            for n, p in zip(counts, parse_counts, strict=True)
            if n
        ]

    def __enter__(self) -> ClientPool:
        for proc in self.procs:
            proc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Children normally exit on their own after the end event; stragglers are killed."""
        for proc in self.procs:
            proc.join(timeout=5 if exc[0] is None else 0.1)
            if proc.is_alive():
                proc.kill()
                proc.join()

    def collect(self) -> list[ProcReport]:
        """One report per process; any client failure fails the whole benchmark loudly."""
        reports: list[ProcReport] = []
        deadline = time.monotonic() + self.timeout_s + 30
        for _ in self.procs:
            try:
                item = self.results.get(timeout=max(1.0, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError("a client process did not report in time") from None
            if isinstance(item, str):
                raise RuntimeError(f"client process failed: {item}")
            reports.append(item)
        return reports


def tallies_of(reports: list[ProcReport]) -> list[Tally]:
    """All connections of all client processes, flat."""
    return [t for r in reports for t in r.tallies]


# --- the gateway process --------------------------------------------------------------------------


class GatewayProc:
    """``python -m gateway`` as a child process, with the /proc readings the benchmark needs."""

    def __init__(self, redis_url: str, log_path: Path, **settings: object) -> None:
        self.redis_url = redis_url
        self.port = free_port()
        self.log_path = log_path
        self.settings = settings
        self.env = {**os.environ, **{f"LOGBROKER_{k.upper()}": str(v) for k, v in settings.items()}}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout_s: float = 20.0) -> GatewayProc:
        """Start and wait for /readyz; a gateway that dies while starting fails with its log."""
        cmd = [sys.executable, "-m", "gateway", "--port", str(self.port), "--redis-url", self.redis_url]
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited: {self.log_path.read_text()[-3000:]}")
            if self.ready() is not None:
                return self
            time.sleep(0.05)
        raise TimeoutError(f"gateway did not become ready: {self.log_path.read_text()[-3000:]}")

    def ready(self) -> dict[str, Any] | None:
        """GET /readyz: ``{"status": "ready", "clients": n}``, or None when it does not answer 200."""
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as resp:
                answer: dict[str, Any] = json.loads(resp.read())
                return answer
        except (urllib.error.URLError, OSError):
            return None

    def stop(self) -> None:
        stop_process(self.process)

    def cpu_s(self) -> float:
        """What the gateway cost, whoever else shares the cores."""
        return proc_cpu_s(self.pid)

    def memory_kib(self, key: str = "VmRSS") -> int:
        return proc_status_kib(self.pid, key)

    def wait_for_clients(self, n: int, timeout_s: float = 60.0) -> None:
        """Until the gateway itself reports exactly ``n`` SSE clients (so all are subscribed)."""
        deadline = time.monotonic() + timeout_s
        seen = None
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"gateway died: {self.log_path.read_text()[-3000:]}")
            answer = self.ready()
            seen = None if answer is None else answer.get("clients")
            if seen == n:
                return
            time.sleep(0.1)
        raise TimeoutError(f"gateway reports {seen} clients, expected {n}")


@contextmanager
def running_gateway(redis_url: str, tmp: Path, name: str, **settings: object) -> Iterator[GatewayProc]:
    """A gateway that is stopped on every way out, errors included."""
    gw = GatewayProc(redis_url, tmp / f"{name}.log", **settings)
    try:
        gw.start()
        log(f"gateway {name} pid {gw.pid} on {gw.url}")
        yield gw
    finally:
        gw.stop()


def effective_settings(overrides: dict[str, object]) -> dict[str, Any]:
    """The settings the gateway ran with: its own parser over the same environment and overrides."""
    settings = GatewaySettings(**overrides)  # type: ignore[arg-type]
    return {name: getattr(settings, name) for name in REPORTED_SETTINGS}


# --- publishing -----------------------------------------------------------------------------------


def _workers(pub: Publisher, job: str) -> tuple[Any, list[WorkerHandle[Any]]]:
    """One job, spread over steps and workers, as a real job's entries are."""
    handle = pub.job(job, name="Fan-out benchmark", type="benchmark")
    workers = [handle.step(f"step-{w % 4}").worker(f"w-{w}") for w in range(WORKERS)]
    return handle, workers


async def publish_burst(url: str, job: str, n: int, size: int) -> float:
    """``n`` entries as fast as the publisher goes, then the end entry; returns the start time."""
    async with Publisher(url) as pub:
        handle, workers = _workers(pub, job)
        start = time.monotonic()
        for i in range(n):
            await workers[i % WORKERS].info(message(i, size))
        await handle.end("completed")
        report = await pub.flush()
    if report.pending:
        raise RuntimeError(f"publisher could not deliver {report.pending} entries")
    return start


async def publish_paced(url: str, job: str, rate: int, seconds: float) -> float:
    """``rate`` entries/s for ``seconds``, each stamped with ``t_ns``; returns the achieved rate."""
    total = int(rate * seconds)
    async with Publisher(url) as pub:
        handle, workers = _workers(pub, job)
        start = time.monotonic()
        i = 0
        while i < total:
            due = min(total, int((time.monotonic() - start) * rate) + 1)
            while i < due:
                await workers[i % WORKERS].info(message(i), t_ns=time.time_ns())
                i += 1
            await asyncio.sleep(0.001)
        elapsed = time.monotonic() - start
        await handle.end("completed")
        report = await pub.flush()
    if report.pending:
        raise RuntimeError(f"publisher could not deliver {report.pending} entries")
    return total / elapsed


def redis_cpu_s(client: redis.Redis) -> float:
    """redis-server's own CPU counters, so its share of the two cores is visible."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


# --- the three measurements -----------------------------------------------------------------------


def new_job(label: str) -> str:
    """A fresh job per measurement: clients always start on a job that does not exist yet."""
    return f"fanout-{label}-{secrets.token_hex(3)}"


class HasCpu(Protocol):
    """A client process's report (``ProcReport`` here, ``latency_c.CReport`` for the C clients)."""

    @property
    def cpu_s(self) -> float: ...


@dataclass(frozen=True, slots=True)
class CpuUse:
    """CPU seconds of everyone sharing the two cores: who a missed goal should be blamed on."""

    gateway_s: float
    redis_s: float
    publisher_s: float

    @staticmethod
    def now(gw: GatewayProc, rc: redis.Redis) -> CpuUse:
        """A snapshot; ``since`` turns two snapshots into the CPU spent in between."""
        return CpuUse(gw.cpu_s(), redis_cpu_s(rc), cpu_self_s())  # this process only publishes meanwhile

    def since(self, gw: GatewayProc, rc: redis.Redis) -> CpuUse:
        now = CpuUse.now(gw, rc)
        return CpuUse(
            now.gateway_s - self.gateway_s, now.redis_s - self.redis_s, now.publisher_s - self.publisher_s
        )

    def report(self, reports: Sequence[HasCpu]) -> dict[str, float]:
        """The JSON keys, with the client processes' own CPU time added."""
        return {
            "gateway_cpu_s": round(self.gateway_s, 2),
            "clients_cpu_s": round(sum(r.cpu_s for r in reports), 2),
            "redis_cpu_s": round(self.redis_s, 2),
            "publisher_cpu_s": round(self.publisher_s, 2),
        }


def measure_throughput(
    gw: GatewayProc, url: str, rc: redis.Redis, sizes: Sizes, spy: str | None
) -> dict[str, Any]:
    """Part 1: clients wait for a job that does not exist yet; then M entries as fast as possible."""
    job = new_job("rate")
    log(
        f"1. throughput: {sizes.clients} clients, {sizes.client_processes} processes, {sizes.entries} entries"
    )
    pool = ClientPool(gw.url, job, sizes.clients, sizes.client_processes, 0, sizes.timeout_s)
    with pool:
        gw.wait_for_clients(sizes.clients)
        with py_spy(gw.pid, spy, rate=200):
            cpu = CpuUse.now(gw, rc)
            start = asyncio.run(publish_burst(url, job, sizes.entries, MESSAGE_BYTES))
            publish_s = time.monotonic() - start
            reports = pool.collect()
            cpu = cpu.since(gw, rc)
    result = throughput_result(sizes, reports, start, publish_s, cpu)
    log(f"   {result['deliveries_per_s']:,} deliveries/s, exact={result['exact']}")
    return result


def throughput_result(
    sizes: Sizes, reports: list[ProcReport], start: float, publish_s: float, cpu: CpuUse
) -> dict[str, Any]:
    """Rate = clients x (M+1) / (first publish .. last client's end event)."""
    tallies = tallies_of(reports)
    expected = sizes.entries + 1
    counts = [t.events for t in tallies]
    wall = max(t.ended_at or 0.0 for t in tallies) - start
    deliveries = sizes.clients * expected
    return {
        "clients": sizes.clients,
        "client_processes": sizes.client_processes,
        "entries": sizes.entries,
        "message_bytes": MESSAGE_BYTES,
        "events_per_client": expected,
        "deliveries": deliveries,
        "publish_s": round(publish_s, 3),
        "wall_s": round(wall, 3),
        "deliveries_per_s": round(deliveries / wall),
        "min_events": min(counts),
        "max_events": max(counts),
        "exact": all(c == expected for c in counts) and all(t.ended_at for t in tallies),
        "deliveries_per_gateway_cpu_s": round(deliveries / cpu.gateway_s) if cpu.gateway_s else None,
        "gateway_cpu_utilization": round(cpu.gateway_s / wall, 2),
        **cpu.report(reports),
    }


def measure_latency(gw: GatewayProc, url: str, rc: redis.Redis, sizes: Sizes) -> dict[str, Any]:
    """Part 2: a paced publisher stamps ``t_ns``; a few clients parse every event, the rest count."""
    job = new_job("latency")
    log(f"2. latency: {sizes.rate} entries/s for {sizes.seconds}s to {sizes.clients} clients")
    procs, parsing = sizes.client_processes, sizes.parsing_clients
    with ClientPool(gw.url, job, sizes.clients, procs, parsing, sizes.timeout_s) as pool:
        gw.wait_for_clients(sizes.clients)
        cpu = CpuUse.now(gw, rc)
        achieved = asyncio.run(publish_paced(url, job, sizes.rate, sizes.seconds))
        published = time.monotonic()
        reports = pool.collect()
        cpu = cpu.since(gw, rc)
    result = latency_result(sizes, reports, achieved, published, cpu)
    log(f"   p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, max {result['max_ms']} ms")
    return result


def latency_result(
    sizes: Sizes, reports: list[ProcReport], achieved: float, published: float, cpu: CpuUse
) -> dict[str, Any]:
    """Percentiles over every timed event; the drain time shows a backlog that latency only hints at."""
    tallies = tallies_of(reports)
    entries = int(sizes.rate * sizes.seconds)
    counts = [t.events for t in tallies]
    timed = [len(t.latencies_ms) for t in tallies if t.parse]
    return {
        "client_kind": "python",
        "clients": sizes.clients,
        "parsing_clients": sizes.parsing_clients,
        **latency_percentiles(
            sizes, achieved, [t.latencies_ms for t in tallies], [t.stored_ms for t in tallies]
        ),
        "last_end_after_publish_s": round(max(t.ended_at or 0.0 for t in tallies) - published, 3),
        "exact": all(c == entries + 1 for c in counts) and all(n == entries for n in timed),
        **cpu.report(reports),
    }


def latency_percentiles(
    sizes: Sizes,
    achieved: float,
    latencies_ms: Iterable[Iterable[float]],
    stored_ms: Iterable[Iterable[float]],
) -> dict[str, Any]:
    """Part 2's rate and percentiles over every timed event of every client (nearest rank); shared
    with ``latency_c.py`` so the two results have the same keys and the same arithmetic."""
    latencies = sorted(ms for each in latencies_ms for ms in each)
    stored = sorted(ms for each in stored_ms for ms in each)
    return {
        "rate_eps": sizes.rate,
        "achieved_rate_eps": round(achieved),
        "seconds": sizes.seconds,
        "entries": int(sizes.rate * sizes.seconds),
        "measured_events": len(latencies),
        "p50_ms": round(percentile(latencies, 50), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "max_ms": round(latencies[-1], 2),
        # publish -> stored in Redis (stream id ms, so +-1 ms): the publisher's share
        "stored_p50_ms": round(percentile(stored, 50), 2),
        "stored_p99_ms": round(percentile(stored, 99), 2),
    }


def raise_fd_limit(needed: int) -> None:
    """The slow clients' sockets live here and in the gateway, which inherits this limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        new = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        log(f"raised RLIMIT_NOFILE soft limit {soft} -> {new}")


@contextmanager
def slow_sockets(gw: GatewayProc, job: str, n: int) -> Iterator[list[socket.socket]]:
    """``n`` raw connections that ask for the stream and then never read a byte.

    They connect in batches the gateway must have subscribed before the next one: a burst beyond
    the listen backlog (128) gets its handshakes dropped and retried with exponential backoff.
    """
    request = f"GET /v1/jobs/{job}/stream HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    socks: list[socket.socket] = []
    try:
        for i in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RCVBUF)
            s.connect(("127.0.0.1", gw.port))
            s.sendall(request)
            if (i + 1) % CONNECT_BATCH == 0 or i + 1 == n:
                gw.wait_for_clients(i + 1)
        yield socks
    finally:
        for s in socks:
            s.close()


def unread_bytes(s: socket.socket) -> int:
    """Bytes waiting in the socket's receive queue: > 0 shows the client really is stalled."""
    value: int = struct.unpack("i", fcntl.ioctl(s.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
    return value


def kernel_tcp_mem_kib() -> int:
    """System-wide TCP buffer memory (/proc/net/sockstat): where stalled data sits outside the gateway."""
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                parts = line.split()
                return int(parts[parts.index("mem") + 1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    return 0


def measure_slow_clients(url: str, tmp: Path, sizes: Sizes) -> dict[str, Any]:
    """Part 3: a fresh gateway's RSS before, with idle and with stalled slow clients (+ a few normal)."""
    raise_fd_limit(sizes.slow_clients + 1024)
    job = new_job("slow")
    n, normal, entries = sizes.slow_clients, sizes.normal_clients, sizes.slow_entries
    log(f"3. memory: {n} slow and {normal} normal clients, {entries} entries of 1 KiB")
    with running_gateway(url, tmp, "slow", **SLOW_GATEWAY) as gw, ExitStack() as stack:
        rss: dict[str, int] = {"before": gw.memory_kib()}
        socks = stack.enter_context(slow_sockets(gw, job, sizes.slow_clients))
        pool = stack.enter_context(ClientPool(gw.url, job, sizes.normal_clients, 1, 0, sizes.timeout_s))
        gw.wait_for_clients(sizes.slow_clients + sizes.normal_clients)
        time.sleep(sizes.settle_s)
        rss["idle"], tcp_idle = gw.memory_kib(), kernel_tcp_mem_kib()
        asyncio.run(publish_burst(url, job, sizes.slow_entries, SLOW_MESSAGE_BYTES))
        reports = pool.collect()
        time.sleep(sizes.settle_s)
        rss["stalled"], rss["peak"], tcp_stalled = (
            gw.memory_kib(),
            gw.memory_kib("VmHWM"),
            kernel_tcp_mem_kib(),
        )
        ready = gw.ready() or {}
        unread = [unread_bytes(s) for s in socks]
    result = slow_result(sizes, rss, reports, unread, ready.get("clients"), (tcp_idle, tcp_stalled))
    log(f"   {result['growth_per_slow_client_kib']} KiB per slow client, exact={result['exact']}")
    return result


def slow_result(
    sizes: Sizes, rss: dict[str, int], reports: list[ProcReport], unread: list[int],
    still_connected: int | None, tcp: tuple[int, int],
) -> dict[str, Any]:  # fmt: skip
    """Growth per slow client over the bare gateway and over the same clients while idle."""
    counts = [t.events for t in tallies_of(reports)]
    n = sizes.slow_clients
    return {
        "slow_clients": n,
        "normal_clients": sizes.normal_clients,
        "entries": sizes.slow_entries,
        "message_bytes": SLOW_MESSAGE_BYTES,
        "slow_so_rcvbuf": SLOW_RCVBUF,
        "rss_before_clients_kib": rss["before"],
        "rss_with_idle_clients_kib": rss["idle"],
        "rss_with_stalled_clients_kib": rss["stalled"],
        "rss_peak_kib": rss["peak"],
        "growth_per_slow_client_kib": round((rss["stalled"] - rss["before"]) / n, 1),
        "growth_per_slow_client_vs_idle_kib": round((rss["stalled"] - rss["idle"]) / n, 1),
        "slow_clients_still_connected": still_connected,
        "slow_clients_stalled": still_connected == n,
        "slow_unread_bytes_min": min(unread),
        "slow_unread_bytes_max": max(unread),
        "kernel_tcp_mem_kib_idle": tcp[0],
        "kernel_tcp_mem_kib_stalled": tcp[1],
        "normal_min_events": min(counts),
        "normal_max_events": max(counts),
        "exact": all(c == sizes.slow_entries + 1 for c in counts),
    }


# --- the run --------------------------------------------------------------------------------------


def machine(client: redis.Redis) -> dict[str, Any]:
    """What the numbers depend on, so a result is never read without its context."""
    return machine_with_aiohttp(client.info("server").get("redis_version"))


def summarize(
    host: dict[str, Any], sizes: Sizes, rate: dict[str, Any], lat: dict[str, Any], slow: dict[str, Any]
) -> dict[str, Any]:
    """The JSON contract (see benchmarks/README.md)."""
    per_cpu = rate["deliveries_per_gateway_cpu_s"]
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": host,
        "settings": {
            "gateway": effective_settings({}),
            "slow_clients_gateway_overrides": SLOW_GATEWAY,
            "settle_s": sizes.settle_s,
        },
        "throughput": rate,
        "latency": lat,
        "slow_clients": slow,
        "goals": {
            "deliveries_per_s>=1000000": rate["deliveries_per_s"] >= GOAL_DELIVERIES_PER_S,
            "deliveries_per_gateway_cpu_s>=1000000": per_cpu is not None and per_cpu >= GOAL_DELIVERIES_PER_S,
            "p99_ms<=50": lat["p99_ms"] <= GOAL_P99_MS,
            "kib_per_slow_client<=64": slow["growth_per_slow_client_kib"] <= GOAL_KIB_PER_SLOW_CLIENT,
        },
        "exact": rate["exact"] and lat["exact"] and slow["exact"],
    }


def run_all(sizes: Sizes, spy: str | None, latency_clients: str = "python") -> dict[str, Any]:
    """All three parts against one private redis-server; every process is stopped on the way out."""
    with tempfile.TemporaryDirectory(prefix="logbroker-fanout-") as tmp_name, ExitStack() as stack:
        tmp = Path(tmp_name)
        server = RedisServer(tmp / "redis", appendonly=False).start()
        stack.callback(server.stop)
        log(f"started redis-server on port {server.port}")
        client = redis.Redis.from_url(server.url)
        stack.callback(client.close)
        with running_gateway(server.url, tmp, "main") as gw:
            rate = measure_throughput(gw, server.url, client, sizes, spy)
            if latency_clients == "c":
                import latency_c  # imports this module: not at the top

                binary = latency_c.build_client(tmp)
                lat = latency_c.measure(gw, server.url, client, sizes, binary, tmp)
            else:
                lat = measure_latency(gw, server.url, client, sizes)
        slow = measure_slow_clients(server.url, tmp, sizes)
        host = machine(client)
    return summarize(host, sizes, rate, lat, slow)


def parse_args(argv: list[str] | None) -> tuple[Sizes, str | None, str]:
    """Sizes from --smoke or the defaults, each overridable by its own option."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    d = Sizes()
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (< 20 s) for the test suite")
    parser.add_argument("--clients", type=int, help=f"SSE clients in parts 1 and 2 ({d.clients})")
    parser.add_argument("--client-processes", type=int, help=f"processes they run in ({d.client_processes})")
    parser.add_argument("--entries", type=int, help=f"entries published in part 1 ({d.entries})")
    parser.add_argument("--rate", type=int, help=f"entries/s in part 2 ({d.rate})")
    parser.add_argument("--seconds", type=float, help=f"duration of part 2 ({d.seconds})")
    parser.add_argument(
        "--parsing-clients", type=int, help=f"part 2 clients that time events ({d.parsing_clients})"
    )
    parser.add_argument("--slow-clients", type=int, help=f"stalled clients in part 3 ({d.slow_clients})")
    parser.add_argument("--normal-clients", type=int, help=f"normal clients in part 3 ({d.normal_clients})")
    parser.add_argument("--slow-entries", type=int, help=f"1 KiB entries in part 3 ({d.slow_entries})")
    parser.add_argument("--py-spy", metavar="OUT", help="record the gateway with py-spy during part 1")
    parser.add_argument(
        "--latency-clients",
        choices=("auto", "c", "python"),
        default="auto",
        help="part 2's clients: C (latency_c.py's, needs gcc), Python, or C where gcc is found (auto)",
    )
    args = parser.parse_args(argv)
    given = {k: v for k, v in vars(args).items() if k in Sizes.__dataclass_fields__ and v is not None}
    sizes = Sizes(**{**vars_of(SMOKE if args.smoke else d), **given})
    problem = check_sizes(sizes)
    if problem:
        parser.error(problem)
    kind = args.latency_clients
    if kind == "auto":
        kind = "c" if shutil.which("gcc") or shutil.which("cc") else "python"
    return sizes, args.py_spy, kind


def vars_of(sizes: Sizes) -> dict[str, Any]:
    """A Sizes as keyword arguments, to overlay the options given."""
    return {name: getattr(sizes, name) for name in Sizes.__dataclass_fields__}


def check_sizes(s: Sizes) -> str | None:
    """A message for the first impossible combination, else None."""
    if min(s.clients, s.client_processes, s.entries, s.rate, s.slow_clients, s.normal_clients) < 1:
        return "sizes must be >= 1"
    if s.slow_entries < 1 or s.seconds <= 0 or int(s.rate * s.seconds) < 1:
        return "--slow-entries, --seconds and --rate x --seconds must be positive"
    if s.client_processes > s.clients:
        return "--client-processes must be <= --clients"
    if not 1 <= s.parsing_clients <= s.clients:
        return "--parsing-clients must be between 1 and --clients"
    return None


def main(argv: list[str] | None = None) -> int:
    """Exit status 1 when any client missed or repeated an event, so CI notices without the JSON."""
    sizes, spy, latency_clients = parse_args(argv)
    result = run_all(sizes, spy, latency_clients)
    print(json.dumps(result, indent=2))
    return 0 if result["exact"] else 1


if __name__ == "__main__":
    sys.exit(main())
