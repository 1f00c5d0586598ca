"""Publish throughput of the logbroker publishers, measured against redis-benchmark's own XADD rate.

Why this exists: the publisher's goals (>= 150,000 entries/s from one process; two processes
together >= 40% of what ``redis-benchmark`` gets out of the same server with pipelined XADD) are
only meaningful next to a reference taken in the same run, on the same machine and server.

Every run verifies that the job's stream holds exactly the number of entries published, so a
fast benchmark that loses entries reports ``"verified": false`` instead of a good number.

Usage (from the repository root)::

    .venv/bin/python benchmarks/publish.py            # full size, about a minute
    .venv/bin/python benchmarks/publish.py --smoke    # seconds; what the test suite runs

One JSON object goes to stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime
import io
import json
import multiprocessing
import queue
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier
from typing import Any
from urllib.parse import urlparse

import redis
from harness import MESSAGE_BYTES, log, machine, message

from broker import Keyspace, Publisher, PublisherConfig, SyncPublisher, WorkerHandle
from gateway.cli.redis_server import RedisServer

STEPS = 4
WORKERS_PER_STEP = 2
DEFAULT_ENTRIES = 300_000
SMOKE_ENTRIES = 2_000
GOAL_1PROC_EPS = 150_000
GOAL_2PROC_FRACTION = 0.40
RB_PIPELINE = 64
RB_KEYSPACE = 100_000
RB_KEY_PREFIX = "benchbench:"
CHILD_TIMEOUT_S = 600.0
_MP = multiprocessing.get_context("spawn")  # fresh interpreters: nothing inherited from the parent


def _workers(pub: Publisher | SyncPublisher, job: str) -> list[WorkerHandle[Any]]:
    """One job, spread over several steps and workers, as a real job's entries are."""
    handle = pub.job(job, name="Publish benchmark", type="benchmark")
    return [handle.step(f"step-{s}").worker(f"w-{w}") for s in range(STEPS) for w in range(WORKERS_PER_STEP)]


@dataclass(frozen=True, slots=True)
class ChildResult:
    """What a publisher process reports; monotonic times are system-wide on Linux, so comparable."""

    job: str
    published: int
    pending: int
    start: float
    end: float


async def _publish_async(url: str, job: str, n: int, barrier: Barrier) -> ChildResult:
    """Connect before the barrier so only publishing and the final flush are timed."""
    async with Publisher(url) as pub:
        workers = _workers(pub, job)
        count = len(workers)
        barrier.wait()
        start = time.monotonic()
        for i in range(n):
            await workers[i % count].info(message(i))
        report = await pub.flush()
        end = time.monotonic()
    return ChildResult(job, n, report.pending, start, end)


def _publish_sync(url: str, job: str, n: int, barrier: Barrier) -> ChildResult:
    """Same workload as ``_publish_async`` through the thread-based publisher, from one thread."""
    with SyncPublisher(url) as pub:
        workers = _workers(pub, job)
        count = len(workers)
        barrier.wait()
        start = time.monotonic()
        for i in range(n):
            workers[i % count].info(message(i))
        report = pub.flush()
        end = time.monotonic()
    return ChildResult(job, n, report.pending, start, end)


def child_main(
    kind: str, url: str, job: str, n: int, barrier: Barrier, results: multiprocessing.Queue[Any]
) -> None:
    """Entry point of one publisher process; errors are sent back instead of dying silently."""
    try:
        if kind == "async":
            result: ChildResult | str = asyncio.run(_publish_async(url, job, n, barrier))
        else:
            result = _publish_sync(url, job, n, barrier)
    except Exception as e:
        barrier.abort()
        result = f"{job}: {type(e).__name__}: {e}"
    results.put(result)


def _collect(results: multiprocessing.Queue[Any], procs: int) -> list[ChildResult]:
    """Gather one result per child; any child failure fails the whole benchmark loudly."""
    collected: list[ChildResult] = []
    for _ in range(procs):
        try:
            item = results.get(timeout=CHILD_TIMEOUT_S)
        except queue.Empty:
            raise RuntimeError(f"a publisher process did not report within {CHILD_TIMEOUT_S}s") from None
        if isinstance(item, str):
            raise RuntimeError(f"publisher process failed: {item}")
        collected.append(item)
    return collected


def run_publishers(kind: str, url: str, procs: int, n: int) -> list[ChildResult]:
    """Start ``procs`` processes that each publish ``n`` entries into their own job, all at once."""
    run = f"{kind}{procs}-{secrets.token_hex(3)}"
    barrier = _MP.Barrier(procs)
    results: multiprocessing.Queue[Any] = _MP.Queue()
    children = [
        _MP.Process(target=child_main, args=(kind, url, f"bench-{run}-p{i}", n, barrier, results))
        for i in range(procs)
    ]
    for child in children:
        child.start()
    try:
        return _collect(results, procs)
    finally:
        for child in children:
            child.join(timeout=30)
            if child.is_alive():
                child.kill()


def verify_and_clean(client: redis.Redis, results: list[ChildResult]) -> bool:
    """Every published entry must be in its job's stream; then drop the bench keys to free memory."""
    keyspace: Keyspace = PublisherConfig().keyspace
    ok = True
    for r in results:
        stream, meta, index, seqs = keyspace.job_keys(r.job)
        length = int(client.xlen(stream))
        if length != r.published or r.pending:
            log(f"LOST ENTRIES in {r.job}: published {r.published}, stream has {length}, pending {r.pending}")
            ok = False
        client.delete(stream, meta, seqs)
        client.zrem(index, r.job)
    return ok


def measure(kind: str, url: str, client: redis.Redis, procs: int, n: int) -> tuple[float, bool]:
    """Aggregate rate: all entries / (first start after the barrier .. last flush completed)."""
    log(f"{kind} publisher, {procs} process(es) x {n} entries ...")
    results = run_publishers(kind, url, procs, n)
    wall = max(r.end for r in results) - min(r.start for r in results)
    rate = sum(r.published for r in results) / wall
    verified = verify_and_clean(client, results)
    log(f"  {rate:,.0f} entries/s in {wall:.2f}s, verified={verified}")
    return rate, verified


def redis_benchmark_xadd(url: str, n: int, clients: int | None) -> float | None:
    """Pipelined XADD of the same payload size, as redis-benchmark measures it; None if not installed."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return None
    parsed = urlparse(url)
    cmd = [binary, "-h", parsed.hostname or "127.0.0.1", "-p", str(parsed.port or 6379), "-n", str(n)]
    if parsed.password:
        cmd += ["-a", parsed.password]
    if clients is not None:
        cmd += ["-c", str(clients)]
    payload = "x" * MESSAGE_BYTES
    cmd += ["-P", str(RB_PIPELINE), "-r", str(RB_KEYSPACE), "--csv"]
    cmd += ["XADD", f"{RB_KEY_PREFIX}__rand_int__", "*", "b", payload]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, check=True).stdout
    rows = [row for row in csv.DictReader(io.StringIO(out)) if row.get("rps")]
    if not rows:
        raise RuntimeError(f"could not parse redis-benchmark output: {out[:500]!r}")
    return float(rows[-1]["rps"])


def drop_benchbench_keys(client: redis.Redis) -> None:
    """redis-benchmark's streams are ours to remove, also on a server given by ``--redis-url``."""
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"{RB_KEY_PREFIX}*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            client.unlink(*batch)
            batch.clear()
    if batch:
        client.unlink(*batch)


def reference_rates(url: str, client: redis.Redis, n: int) -> dict[str, float | None]:
    """redis-benchmark with one client and with its default 50; the better one is the reference."""
    rates: dict[str, float | None] = {}
    for label, clients in (("c1", 1), ("default_clients", None)):
        log(f"redis-benchmark XADD -P {RB_PIPELINE} -n {n} ({label}) ...")
        rates[label] = redis_benchmark_xadd(url, n, clients)
        drop_benchbench_keys(client)
        log(f"  {rates[label]} requests/s")
    return rates


def ratio(rate: float, reference: float | None) -> float | None:
    return None if not reference else round(rate / reference, 3)


def run_all(url: str, entries: int, rb_requests: int) -> dict[str, Any]:
    """All measurements against one server, then the summary object the README is written from."""
    client = redis.Redis.from_url(url)
    try:
        async_rate, async_ok = measure("async", url, client, 1, entries)
        sync_rate, sync_ok = measure("sync", url, client, 1, entries)
        best_kind = "async" if async_rate >= sync_rate else "sync"
        two_rate, two_ok = measure(best_kind, url, client, 2, entries)
        rb = reference_rates(url, client, rb_requests)
        host = machine("cpus", "cpu_model", "python", redis_client=client)
    finally:
        client.close()
    return summarize(
        host, entries, async_rate, sync_rate, best_kind, two_rate, rb, async_ok and sync_ok and two_ok
    )


def summarize(
    host: dict[str, Any], entries: int, async_rate: float, sync_rate: float, two_kind: str,
    two_rate: float, rb: dict[str, float | None], verified: bool,
) -> dict[str, Any]:  # fmt: skip
    """The JSON contract (see benchmarks/README.md); goals are null when there is no reference."""
    measured = [r for r in rb.values() if r is not None]
    reference = max(measured) if measured else None
    best_1proc = max(async_rate, sync_rate)
    ratio_2proc = ratio(two_rate, reference)
    goal_2proc = None if ratio_2proc is None else ratio_2proc >= GOAL_2PROC_FRACTION
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": host,
        "entries_per_process": entries,
        "message_bytes": MESSAGE_BYTES,
        "async_1proc_eps": round(async_rate),
        "sync_1proc_eps": round(sync_rate),
        "two_proc_eps": round(two_rate),
        "two_proc_publisher": two_kind,
        "redis_benchmark_xadd_rps": reference,
        "redis_benchmark_xadd_rps_c1": rb.get("c1"),
        "redis_benchmark_xadd_rps_default_clients": rb.get("default_clients"),
        "ratio_1proc_vs_redis_benchmark": ratio(best_1proc, reference),
        "ratio_2proc_vs_redis_benchmark": ratio_2proc,
        "goals": {
            "1proc>=150000": best_1proc >= GOAL_1PROC_EPS,
            "2proc>=40%_of_redis_benchmark": goal_2proc,
        },
        "verified": verified,
    }


@contextmanager
def redis_url(given: str | None) -> Iterator[str]:
    """The server to measure: the given one, or a private redis-server without persistence."""
    if given:
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="logbroker-bench-") as tmp:
        server = RedisServer(tmp, appendonly=False).start()
        log(f"started redis-server on port {server.port}")
        try:
            yield server.url
        finally:
            server.stop()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--entries", type=int, default=DEFAULT_ENTRIES, help="entries per publisher process")
    parser.add_argument("--smoke", action="store_true", help=f"tiny run ({SMOKE_ENTRIES} entries) for tests")
    parser.add_argument("--redis-url", help="measure this Redis instead of starting a private redis-server")
    args = parser.parse_args(argv)
    if args.entries < 1:
        parser.error("--entries must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Exit status 1 when entries were lost, so a script or CI notices without reading the JSON."""
    args = parse_args(argv)
    entries = SMOKE_ENTRIES if args.smoke else args.entries
    with redis_url(args.redis_url) as url:
        result = run_all(url, entries, entries)
    print(json.dumps(result, indent=2))
    return 0 if result["verified"] else 1


if __name__ == "__main__":
    sys.exit(main())
