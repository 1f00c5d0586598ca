"""``fanout.py`` part 2 (p50/p99 publish -> receive at 10,000 entries/s to 100 clients) with clients in C.

Why this exists: on two cores the load generator competes with the gateway it measures. Part 2's
100 Python clients take ~0.8 µs of CPU per event, 3.9 CPU-s of a 5 s run, two thirds of what the
whole harness (clients and paced publisher) needs while the gateway needs 2 CPU-s; the latency they
report is partly their own run-queue wait. ``sse_c_client.c`` reads the same bytes the same way
(raw body, one regex-equivalent pass per read, receive time once per read; see ``sse_wire``'s
docstring) in C, with epoll. Same gateway, same paced publisher (``fanout_workload.publish_paced``),
same report keys, so the two results sit side by side.

Usage (from the repository root; needs ``gcc``)::

    .venv/bin/python benchmarks/latency_c.py               # 3 runs at full size against one gateway
    .venv/bin/python benchmarks/latency_c.py --runs 7
    .venv/bin/python benchmarks/latency_c.py --smoke       # seconds; what the test suite runs

One JSON object goes to stdout; progress goes to stderr. Exit status 1 if any client missed or
repeated an event.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import shutil
import subprocess
import sys
import tempfile
import time
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from fanout_workload import SMOKE, Sizes, new_job, publish_paced
from harness import CpuUse, GatewayProc, latency_percentiles, log, machine, running_gateway, split

from gateway.cli.redis_server import RedisServer

SOURCE = Path(__file__).resolve().parent / "sse_c_client.c"
PROCESSES = 2  # the C clients' processes: one per core is plenty at ~0.1 µs per event
GOAL_P99_MS = 50.0


def build_client(tmp: Path) -> Path:
    """Compile ``sse_c_client.c`` with gcc -O2 into ``tmp``; a missing gcc is a clear error."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise RuntimeError("latency_c.py needs gcc (apt-get install gcc)")
    binary = tmp / "sse_c_client"
    subprocess.run([gcc, "-O2", "-Wall", "-o", str(binary), str(SOURCE)], check=True)
    return binary


@dataclass(frozen=True, slots=True)
class CReport:
    """One C client process: events per connection, its CPU, and (latency, stored) pairs in ms."""

    events: list[int]
    cpu_s: float
    latencies_ms: array[float]
    stored_ms: array[float]


class CClients:
    """``clients`` connections to one job's stream over ``procs`` C processes; the first
    ``timed`` connections (spread over the processes) time every event."""

    def __init__(self, binary: Path, gw: GatewayProc, job: str, sizes: Sizes, tmp: Path) -> None:
        self.procs: list[tuple[subprocess.Popen[str], Path]] = []
        timed = split(sizes.parsing_clients, PROCESSES)
        for i, conns in enumerate(split(sizes.clients, PROCESSES)):
            out = tmp / f"samples-{job}-{i}.bin"
            cmd = [str(binary), "127.0.0.1", str(gw.port), f"/v1/jobs/{job}/stream", str(conns),
                   str(timed[i]), str(sizes.timeout_s), str(out)]  # fmt: skip
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
            self.procs.append((proc, out))
        for proc, _ in self.procs:
            assert proc.stdout is not None
            if "connected" not in json.loads(proc.stdout.readline() or "{}"):
                self.stop()  # the others too: nothing is left running on the way out
                raise RuntimeError("a C client process could not connect")

    def collect(self, timeout_s: float) -> list[CReport]:
        """Wait for every process to see its end events; any failure fails the benchmark."""
        reports = []
        for proc, out in self.procs:
            stdout, _ = proc.communicate(timeout=timeout_s)
            if proc.returncode != 0:
                raise RuntimeError(f"C client exited with {proc.returncode}")
            result = json.loads(stdout.strip().splitlines()[-1])
            pairs = array("d", out.read_bytes())
            reports.append(CReport(result["events"], result["cpu_s"], pairs[0::2], pairs[1::2]))
        return reports

    def stop(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def measure(
    gw: GatewayProc, url: str, rc: redis.Redis, sizes: Sizes, binary: Path, tmp: Path
) -> dict[str, Any]:
    """One part-2 run: C clients subscribe, the paced publisher stamps ``t_ns``, then percentiles."""
    job = new_job("latency-c")
    clients = CClients(binary, gw, job, sizes, tmp)
    try:
        gw.wait_for_clients(sizes.clients)
        cpu = CpuUse.now(gw, rc)
        achieved = asyncio.run(publish_paced(url, job, sizes.rate, sizes.seconds))
        published = time.monotonic()
        reports = clients.collect(sizes.timeout_s)
        drained_s = time.monotonic() - published
        cpu = cpu.since(gw, rc)
    finally:
        clients.stop()
    entries = int(sizes.rate * sizes.seconds)
    counts = [n for r in reports for n in r.events]
    timed = sum(len(r.latencies_ms) for r in reports)
    result = {
        "client_kind": "c",
        "clients": sizes.clients,
        "parsing_clients": sizes.parsing_clients,
        "client_processes": PROCESSES,
        **latency_percentiles(
            sizes.rate,
            sizes.seconds,
            achieved,
            [r.latencies_ms for r in reports],
            [r.stored_ms for r in reports],
        ),
        "last_end_after_publish_s": round(drained_s, 3),
        "exact": all(c == entries + 1 for c in counts) and timed == entries * sizes.parsing_clients,
        **cpu.report(reports),
    }
    log(f"   C clients: p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, exact {result['exact']}")
    return result


def run(sizes: Sizes, runs: int) -> dict[str, Any]:
    """``runs`` part-2 runs against one private redis-server and one gateway."""
    with tempfile.TemporaryDirectory(prefix="logbroker-latency-c-") as tmp_name:
        tmp = Path(tmp_name)
        binary = build_client(tmp)
        server = RedisServer(tmp / "redis", appendonly=False).start()
        try:
            client = redis.Redis.from_url(server.url)
            with running_gateway(server.url, tmp, "main") as gw:
                results = [measure(gw, server.url, client, sizes, binary, tmp) for _ in range(runs)]
            host = machine(redis_client=client)
            client.close()
        finally:
            server.stop()
    p99s = [r["p99_ms"] for r in results]
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", "benchmarks/latency_c.py", *sys.argv[1:]]),
        "machine": host,
        "runs": results,
        "p99_ms_each_run": p99s,
        "goals": {"p99_ms<=50_runs": sum(p <= GOAL_P99_MS for p in p99s), "of": len(p99s)},
        "exact": all(r["exact"] for r in results),
    }


def main(argv: list[str] | None = None) -> int:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (seconds) for the test suite")
    parser.add_argument("--runs", type=int, default=3, help="part-2 runs against one gateway (3)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    result = run(SMOKE if args.smoke else Sizes(), 1 if args.smoke else args.runs)
    print(json.dumps(result, indent=2))
    return 0 if result["exact"] else 1


if __name__ == "__main__":
    sys.exit(main())
