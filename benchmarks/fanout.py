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
import resource
import shutil
import socket
import struct
import sys
import tempfile
import termios
import time
from array import array
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import latency_c
import redis
from fanout_workload import SMOKE, Sizes, new_job, publish_burst, publish_paced
from harness import (
    MESSAGE_BYTES,
    Children,
    CpuUse,
    GatewayProc,
    gateway_settings,
    latency_percentiles,
    log,
    machine,
    py_spy,
    running_gateway,
    sizes_from_args,
    split,
)
from sse_wire import ID_STAMP_RE, EventCounter, stream_all

from gateway.cli.redis_server import RedisServer

SLOW_MESSAGE_BYTES = 1024
SLOW_RCVBUF = 4096
CONNECT_BATCH = 100  # slow clients connected at a time, below aiohttp's listen backlog of 128
GOAL_DELIVERIES_PER_S = 1_000_000
GOAL_P99_MS = 50.0
GOAL_KIB_PER_SLOW_CLIENT = 64.0
SLOW_GATEWAY = {"write_timeout_s": 600}  # stalled clients must not be reaped while we measure them
REPORTED_SETTINGS = (
    "partitions", "heartbeat_s", "write_timeout_s", "write_chunk_bytes", "write_buffer_bytes",
    "max_clients", "ring_entries", "ring_bytes", "page_entries", "page_max_bytes", "read_block_ms",
    "read_count", "read_linger_ms", "event_loop",
)  # fmt: skip


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


def client_pool(base: str, job: str, clients: int, procs: int, parsing: int, timeout_s: float) -> Children:
    """``clients`` SSE connections to one job, spread over ``procs`` spawned processes, ``parsing``
    of them (spread the same way) timing every event; each process reports one ``ProcReport``."""
    url = f"{base}/v1/jobs/{job}/stream"
    counts = zip(split(clients, procs), split(parsing, procs), strict=True)
    return Children(client_main, [(url, n, p, timeout_s) for n, p in counts if n], timeout_s)


def tallies_of(reports: list[ProcReport]) -> list[Tally]:
    """All connections of all client processes, flat."""
    return [t for r in reports for t in r.tallies]


# --- the three measurements -----------------------------------------------------------------------


def measure_throughput(
    gw: GatewayProc, url: str, rc: redis.Redis, sizes: Sizes, spy: str | None
) -> dict[str, Any]:
    """Part 1: clients wait for a job that does not exist yet; then M entries as fast as possible."""
    job = new_job("rate")
    log(
        f"1. throughput: {sizes.clients} clients, {sizes.client_processes} processes, {sizes.entries} entries"
    )
    pool = client_pool(gw.url, job, sizes.clients, sizes.client_processes, 0, sizes.timeout_s)
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
    with client_pool(gw.url, job, sizes.clients, procs, parsing, sizes.timeout_s) as pool:
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
            sizes.rate,
            sizes.seconds,
            achieved,
            [t.latencies_ms for t in tallies],
            [t.stored_ms for t in tallies],
        ),
        "last_end_after_publish_s": round(max(t.ended_at or 0.0 for t in tallies) - published, 3),
        "exact": all(c == entries + 1 for c in counts) and all(n == entries for n in timed),
        **cpu.report(reports),
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
        pool = stack.enter_context(client_pool(gw.url, job, sizes.normal_clients, 1, 0, sizes.timeout_s))
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
        still_connected = gw.clients()
        unread = [unread_bytes(s) for s in socks]
    result = slow_result(sizes, rss, reports, unread, still_connected, (tcp_idle, tcp_stalled))
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


def summarize(
    host: dict[str, Any], sizes: Sizes, rate: dict[str, Any], lat: dict[str, Any], slow: dict[str, Any]
) -> dict[str, Any]:
    """The JSON contract (see benchmarks/README.md)."""
    per_cpu = rate["deliveries_per_gateway_cpu_s"]
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": host,
        "settings": {
            "gateway": gateway_settings(REPORTED_SETTINGS),
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
                binary = latency_c.build_client(tmp)
                lat = latency_c.measure(gw, server.url, client, sizes, binary, tmp)
            else:
                lat = measure_latency(gw, server.url, client, sizes)
        slow = measure_slow_clients(server.url, tmp, sizes)
        host = machine(redis_client=client)
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
    sizes = sizes_from_args(args, d, SMOKE)
    problem = check_sizes(sizes)
    if problem:
        parser.error(problem)
    kind = args.latency_clients
    if kind == "auto":
        kind = "c" if shutil.which("gcc") or shutil.which("cc") else "python"
    return sizes, args.py_spy, kind


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
