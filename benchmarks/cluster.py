"""The same publish and fan-out workload against one redis-server and against a 3-master Redis Cluster.

Why this exists: the cluster support (``PublisherConfig(cluster=True)``, ``LOGBROKER_REDIS_CLUSTER``)
is there to spread jobs over several Redis masters. Whether that costs or gains throughput is only
known from a run that puts both topologies through the same workload, on the same machine, one right
after the other, and shows where the CPU went (per redis-server, the gateway, publishers, clients).

Every part checks exactness: each job's stream holds exactly what was published (``XLEN``), and each
SSE client got exactly its job's entries plus the end event, so a fast but lossy run reports
``"exact": false`` (and exit status 1) instead of a good number.

The cluster has no replicas (``replicas=0``): replicas would double the Redis processes on a small
machine and measure replication, not sharding. Both topologies run with AOF off.

Usage (from the repository root)::

    .venv/bin/python benchmarks/cluster.py            # full size, ~35 s on a 2-core machine
    .venv/bin/python benchmarks/cluster.py --smoke    # seconds; what the test suite runs

One JSON object goes to stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import multiprocessing
import os
import secrets
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import redis
from harness import (
    MESSAGE_BYTES,
    ROOT,
    Children,
    GatewayProc,
    cpu_self_s,
    log,
    machine,
    message,
    proc_cpu_s,
    running_gateway,
    sizes_from_args,
    split,
)
from redis.cluster import RedisCluster
from sse_wire import EventCounter, stream_all

from broker import Keyspace, Publisher, PublisherConfig, WorkerHandle
from gateway.cli.redis_server import RedisServer

if str(ROOT) not in sys.path:  # tests/ is not an installed package; its cluster helper is reused as is
    sys.path.insert(0, str(ROOT))
from tests.support.cluster import RedisClusterProcesses

WORKERS_PER_JOB = 2
MASTERS = 3
REPLICAS = 0  # sharding, not replication, is what is compared; replicas would only add processes
PUBLISHER = "async"  # broker.Publisher: the faster of the two in benchmarks/publish.py (README results)
_MP = multiprocessing.get_context("spawn")  # fresh interpreters: nothing inherited from the parent


@dataclass(frozen=True, slots=True)
class Sizes:
    """Every size of one run, so --smoke and the full run differ only here."""

    publishers: int = 4
    entries: int = 100_000  # per publisher process
    jobs_per_publisher: int = 8  # several jobs each, so that jobs land on every master
    clients: int = 40
    client_processes: int = 4
    timeout_s: float = 300.0


SMOKE = Sizes(
    publishers=2, entries=2_000, jobs_per_publisher=4, clients=8, client_processes=2, timeout_s=60.0
)


def entries_per_job(n: int, jobs: int) -> list[int]:
    """How many of ``n`` round-robin entries over ``jobs`` x WORKERS_PER_JOB workers each job gets."""
    per_worker = split(n, jobs * WORKERS_PER_JOB)
    return [sum(per_worker[j * WORKERS_PER_JOB : (j + 1) * WORKERS_PER_JOB]) for j in range(jobs)]


# --- child processes: publishers and SSE clients ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class PubResult:
    """What a publisher process reports; monotonic times are system-wide on Linux, so comparable."""

    jobs: list[str]
    entries: list[int]  # per job, not counting the end entry
    pending: int
    start: float
    end: float
    cpu_s: float


async def _publish(url: str, cluster: bool, jobs: list[str], n: int, barrier: Barrier) -> PubResult:
    """Connect before the barrier; time N entries round-robin over every job's workers, the ends, flush."""
    async with Publisher(url, config=PublisherConfig(cluster=cluster)) as pub:
        handles = [pub.job(job, name="Cluster benchmark", type="benchmark") for job in jobs]
        workers: list[WorkerHandle[Any]] = [
            h.step(f"step-{k}").worker(f"w-{k}") for h in handles for k in range(WORKERS_PER_JOB)
        ]
        count = len(workers)
        barrier.wait()
        cpu, start = cpu_self_s(), time.monotonic()
        for i in range(n):
            await workers[i % count].info(message(i))
        for handle in handles:
            await handle.end("completed")
        report = await pub.flush()
        end = time.monotonic()
    return PubResult(jobs, entries_per_job(n, len(jobs)), report.pending, start, end, cpu_self_s() - cpu)


def publisher_main(
    url: str, cluster: bool, jobs: list[str], n: int, barrier: Barrier, results: multiprocessing.Queue[Any]
) -> None:
    """Entry point of one publisher process; errors are sent back instead of dying silently."""
    try:
        result: PubResult | str = asyncio.run(_publish(url, cluster, jobs, n, barrier))
    except Exception as e:
        barrier.abort()
        result = f"publisher {jobs[0]}...: {type(e).__name__}: {e}"
    results.put(result)


@dataclass(frozen=True, slots=True)
class ClientReport:
    """One client process: its connections' (events, end time) and its CPU time once connected."""

    events: list[int]
    ended_at: list[float | None]
    cpu_s: float


async def _watch_all(urls: list[str], timeout_s: float) -> ClientReport:
    """Every connection until its end event, counting ``ID_MARK`` in raw bytes (``sse_wire``); CPU
    counts once all are open: start-up and imports are not fan-out."""
    tallies = [EventCounter() for _ in urls]
    cpu = await stream_all(urls, tallies, timeout_s)
    return ClientReport([t.events for t in tallies], [t.ended_at for t in tallies], cpu)


def client_main(urls: list[str], timeout_s: float, results: multiprocessing.Queue[Any]) -> None:
    """Entry point of one client process; errors are sent back instead of dying silently."""
    try:
        report: ClientReport | str = asyncio.run(_watch_all(urls, timeout_s))
    except Exception as e:
        report = f"clients: {type(e).__name__}: {e}"
    results.put(report)


# --- the two topologies ---------------------------------------------------------------------------


@dataclass(slots=True)
class Target:
    """One topology under test: its URL, its redis-server processes, and a client that can read it."""

    name: str
    cluster: bool
    servers: list[RedisServer]
    client: redis.Redis | RedisCluster

    @property
    def url(self) -> str:
        return self.servers[0].url

    def redis_cpu(self) -> dict[str, float]:
        """CPU seconds so far of every redis-server of this topology, by ``host:port``."""
        return {f"127.0.0.1:{s.port}": proc_cpu_s(s.process.pid) for s in self.servers if s.process}

    def evalsha(self) -> tuple[int, int]:
        """(calls, microseconds) of EVALSHA, the publisher's write script, summed over every server."""
        calls = usec = 0
        for server in self.servers:
            with redis.Redis(port=server.port) as client:
                stats = client.info("commandstats").get("cmdstat_evalsha", {})
            calls += int(stats.get("calls", 0))
            usec += int(stats.get("usec", 0))
        return calls, usec

    def jobs_per_master(self, jobs: list[str]) -> dict[str, int]:
        """Which master owns each job's stream, counted; a master with no job shows 0."""
        counts = dict.fromkeys(self.redis_cpu(), 0)
        keyspace = Keyspace()
        for job in jobs:
            if isinstance(self.client, RedisCluster):
                node = self.client.get_node_from_key(keyspace.stream(job))  # type: ignore[no-untyped-call,unused-ignore]
                name = f"127.0.0.1:{node.port}"
            else:
                name = f"127.0.0.1:{self.servers[0].port}"
            counts[name] += 1
        return counts

    def xlen(self, job: str) -> int:
        return int(self.client.xlen(Keyspace().stream(job)))


@contextmanager
def single_target(tmp: Path) -> Iterator[Target]:
    """One private redis-server (AOF off), stopped on every way out."""
    server = RedisServer(tmp / "single", appendonly=False)
    try:
        server.start()
        log(f"single: redis-server on port {server.port}")
        client = redis.Redis.from_url(server.url)
        try:
            yield Target("single", False, [server], client)
        finally:
            client.close()
    finally:
        server.stop()


@contextmanager
def cluster_target(tmp: Path) -> Iterator[Target]:
    """A 3-master Redis Cluster without replicas (AOF off, like the single server), always stopped."""
    cluster = RedisClusterProcesses(tmp / "cluster", masters=MASTERS, replicas=REPLICAS)
    for server in cluster.servers:
        server.appendonly = False  # same persistence as the single server: the comparison is topology
    try:
        cluster.start()  # stops its own servers if it fails half-way
        log(f"cluster: {MASTERS} masters on ports {', '.join(map(str, cluster.ports))}")
        client = RedisCluster.from_url(cluster.url)
        try:
            yield Target("cluster", True, cluster.servers, client)
        finally:
            client.close()
    finally:
        cluster.stop()


# --- the two measurements -------------------------------------------------------------------------


def new_jobs(target: Target, part: str, sizes: Sizes) -> list[list[str]]:
    """Fresh job ids per publisher process, so every part starts on jobs that do not exist yet."""
    run = secrets.token_hex(3)
    return [
        [f"cl-{target.name}-{part}-{run}-p{p}-j{j}" for j in range(sizes.jobs_per_publisher)]
        for p in range(sizes.publishers)
    ]


class Publishers(Children):
    """P publisher processes that meet this process at one barrier once all are connected.

    This process waits at the barrier too, so the CPU snapshots it takes right after cover the timed
    window only, not the children's start-up (imports, connecting, SCRIPT LOAD).
    """

    def __init__(self, target: Target, jobs: list[list[str]], sizes: Sizes) -> None:
        self.barrier = _MP.Barrier(sizes.publishers + 1)
        args = [(target.url, target.cluster, proc_jobs, sizes.entries, self.barrier) for proc_jobs in jobs]
        super().__init__(publisher_main, args, sizes.timeout_s)

    def go(self) -> None:
        """Release the publishers; a child that failed before the barrier is reported by ``collect``."""
        try:
            self.barrier.wait(timeout=self.timeout_s)
        except threading.BrokenBarrierError:
            self.collect()
            raise


def system_busy_s() -> float:
    """Busy CPU seconds of the whole machine (/proc/stat), everyone's: this box is shared."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Usage:
    """A snapshot of where CPU went: each redis-server, its EVALSHA counters, the whole machine."""

    at: float
    redis_cpu: dict[str, float]
    evalsha: tuple[int, int]
    machine_busy_s: float

    @staticmethod
    def now(target: Target) -> Usage:
        return Usage(time.monotonic(), target.redis_cpu(), target.evalsha(), system_busy_s())

    def since(self, earlier: Usage, entries: int) -> dict[str, Any]:
        """The JSON keys for the window from ``earlier`` to this snapshot."""
        redis_cpu = {
            name: round(self.redis_cpu[name] - earlier.redis_cpu[name], 2) for name in self.redis_cpu
        }
        calls = self.evalsha[0] - earlier.evalsha[0]
        usec = self.evalsha[1] - earlier.evalsha[1]
        return {
            "redis_cpu_s": redis_cpu,
            "redis_cpu_s_total": round(sum(redis_cpu.values()), 2),
            "evalsha_calls": calls,
            "entries_per_evalsha": round(entries / calls, 1) if calls else None,
            "evalsha_wall_us_per_entry": round(usec / entries, 2),
            "machine_busy_cores": round(
                (self.machine_busy_s - earlier.machine_busy_s) / (self.at - earlier.at), 2
            ),
        }


def verify_streams(target: Target, results: list[PubResult]) -> bool:
    """Every job's stream holds exactly its entries + the end entry, and nothing is left pending."""
    ok = True
    for r in results:
        for job, entries in zip(r.jobs, r.entries, strict=True):
            length = target.xlen(job)
            if length != entries + 1 or r.pending:
                log(f"LOST ENTRIES in {job}: published {entries}+1, stream has {length}, pending {r.pending}")
                ok = False
    return ok


def total_entries(sizes: Sizes) -> int:
    """Every entry a part writes: the log lines and each job's end entry."""
    return sizes.publishers * (sizes.entries + sizes.jobs_per_publisher)


def publish_result(target: Target, sizes: Sizes, results: list[PubResult]) -> dict[str, Any]:
    """Rate = all entries / (first start after the barrier .. last flush completed)."""
    wall = max(r.end for r in results) - min(r.start for r in results)
    entries = sizes.publishers * sizes.entries
    return {
        "entries": entries,
        "wall_s": round(wall, 3),
        "entries_per_s": round(entries / wall),
        "jobs_per_master": target.jobs_per_master([j for r in results for j in r.jobs]),
        "publishers_cpu_s": round(sum(r.cpu_s for r in results), 2),
        "verified": verify_streams(target, results),
    }


def measure_publish(target: Target, sizes: Sizes) -> dict[str, Any]:
    """Part 1: publishers only, no gateway: the aggregate rate Redis (or the cluster) takes in."""
    log(f"{target.name}: 1. publish, {sizes.publishers} processes x {sizes.entries} entries")
    jobs = new_jobs(target, "pub", sizes)
    with Publishers(target, jobs, sizes) as pubs:
        pubs.go()
        before = Usage.now(target)
        results: list[PubResult] = pubs.collect()
        usage = Usage.now(target).since(before, total_entries(sizes))
    result = publish_result(target, sizes, results)
    result.update(usage)
    rate, ok, spread = result["entries_per_s"], result["verified"], result["jobs_per_master"]
    log(f"   {rate:,} entries/s, verified={ok}, jobs per master {spread}")
    return result


def client_urls(gw: GatewayProc, jobs: list[str], sizes: Sizes) -> tuple[list[list[str]], list[str]]:
    """Client k follows job k mod jobs; the URLs split over the client processes, and each one's job."""
    of_client = [jobs[k % len(jobs)] for k in range(sizes.clients)]
    urls = [f"{gw.url}/v1/jobs/{job}/stream" for job in of_client]
    chunks, at = [], 0
    for n in split(sizes.clients, sizes.client_processes):
        chunks.append(urls[at : at + n])
        at += n
    return [c for c in chunks if c], of_client


def measure_delivery(target: Target, tmp: Path, sizes: Sizes) -> dict[str, Any]:
    """Part 2: the same publishing while a gateway streams every job to SSE clients connected before."""
    log(f"{target.name}: 2. delivery, {sizes.clients} clients in {sizes.client_processes} processes")
    jobs = new_jobs(target, "sse", sizes)
    flat = [j for proc_jobs in jobs for j in proc_jobs]
    cluster = "true" if target.cluster else "false"
    with running_gateway(target.url, tmp, target.name, redis_cluster=cluster) as gw:
        chunks, of_client = client_urls(gw, flat, sizes)
        with Children(client_main, [(c, sizes.timeout_s) for c in chunks], sizes.timeout_s) as clients:
            gw.wait_for_clients(sizes.clients)
            with Publishers(target, jobs, sizes) as pubs:
                pubs.go()
                before, gw_before = Usage.now(target), gw.cpu_s()
                results: list[PubResult] = pubs.collect()
            reports: list[ClientReport] = clients.collect()
            gateway_cpu = gw.cpu_s() - gw_before
            usage = Usage.now(target).since(before, total_entries(sizes))
    expected = {job: n + 1 for r in results for job, n in zip(r.jobs, r.entries, strict=True)}
    result = delivery_result(sizes, results, reports, [expected[j] for j in of_client])
    result.update(
        jobs_per_master=target.jobs_per_master(flat),
        verified=verify_streams(target, results),
        gateway_cpu_s=round(gateway_cpu, 2),
        clients_cpu_s=round(sum(r.cpu_s for r in reports), 2),
        publishers_cpu_s=round(sum(r.cpu_s for r in results), 2),
        **usage,
    )
    log(f"   {result['deliveries_per_s']:,} deliveries/s, exact={result['exact']}")
    return result


def delivery_result(
    sizes: Sizes, results: list[PubResult], reports: list[ClientReport], expected: list[int]
) -> dict[str, Any]:
    """Rate = events received by all clients / (first publish .. the last client's end event)."""
    counts = [n for r in reports for n in r.events]
    ends = [t for r in reports for t in r.ended_at]
    start = min(r.start for r in results)
    wall = max(t or 0.0 for t in ends) - start
    deliveries = sum(counts)
    return {
        "clients": sizes.clients,
        "client_processes": len(reports),
        "entries": sizes.publishers * sizes.entries,
        "deliveries": deliveries,
        "publish_s": round(max(r.end for r in results) - start, 3),
        "wall_s": round(wall, 3),
        "deliveries_per_s": round(deliveries / wall),
        "exact": counts == expected and all(t is not None for t in ends),
        "missing_or_extra_events": sum(abs(c - e) for c, e in zip(counts, expected, strict=True)),
    }


def measure(target: Target, tmp: Path, sizes: Sizes) -> dict[str, Any]:
    """Both parts against one topology."""
    return {
        "masters": len(target.servers),
        "replicas": REPLICAS if target.cluster else 0,
        "publish": measure_publish(target, sizes),
        "delivery": measure_delivery(target, tmp, sizes),
    }


# --- the run --------------------------------------------------------------------------------------


def ratio(cluster: float, single: float) -> float:
    return round(cluster / single, 3)


def summarize(
    host: dict[str, Any], sizes: Sizes, single: dict[str, Any], cluster: dict[str, Any]
) -> dict[str, Any]:
    """The JSON contract (see benchmarks/README.md)."""
    parts = (single["publish"], single["delivery"], cluster["publish"], cluster["delivery"])
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": host,
        "sizes": {
            **asdict(sizes),
            "message_bytes": MESSAGE_BYTES,
            "workers_per_job": WORKERS_PER_JOB,
            "publisher": PUBLISHER,
            "aof": False,
        },
        "single": single,
        "cluster": cluster,
        "ratios": {
            "publish_cluster_vs_single": ratio(
                cluster["publish"]["entries_per_s"], single["publish"]["entries_per_s"]
            ),
            "delivery_cluster_vs_single": ratio(
                cluster["delivery"]["deliveries_per_s"], single["delivery"]["deliveries_per_s"]
            ),
        },
        "exact": all(p["verified"] for p in parts)
        and single["delivery"]["exact"]
        and cluster["delivery"]["exact"],
    }


def run_all(sizes: Sizes) -> dict[str, Any]:
    """Single server first, then the cluster; each is stopped before the next starts."""
    with tempfile.TemporaryDirectory(prefix="logbroker-cluster-bench-") as tmp_name:
        tmp = Path(tmp_name)
        with single_target(tmp) as target:
            with redis.Redis.from_url(target.url) as client:
                host = machine(redis_client=client)
            single = measure(target, tmp, sizes)
        with cluster_target(tmp) as target:
            cluster = measure(target, tmp, sizes)
    return summarize(host, sizes, single, cluster)


def parse_args(argv: list[str] | None) -> Sizes:
    """Sizes from --smoke or the defaults, each overridable by its own option."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    d = Sizes()
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (< 30 s) for the test suite")
    parser.add_argument("--publishers", type=int, help=f"publisher processes ({d.publishers})")
    parser.add_argument("--entries", type=int, help=f"entries per publisher process ({d.entries})")
    parser.add_argument("--clients", type=int, help=f"SSE clients in part 2 ({d.clients})")
    args = parser.parse_args(argv)
    sizes = sizes_from_args(args, d, SMOKE)
    if min(sizes.publishers, sizes.entries, sizes.clients) < 1:
        parser.error("--publishers, --entries and --clients must be >= 1")
    if sizes.client_processes > sizes.clients:
        sizes = replace(sizes, client_processes=sizes.clients)
    return sizes


def _unwind(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so every context manager stops the servers and processes it started."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Exit status 1 when any entry or event was lost or repeated, so CI notices without the JSON."""
    signal.signal(signal.SIGTERM, _unwind)
    sizes = parse_args(argv)
    result = run_all(sizes)
    print(json.dumps(result, indent=2))
    return 0 if result["exact"] else 1


if __name__ == "__main__":
    sys.exit(main())
