"""End to end with real processes: a gateway (python -m gateway), publisher processes and SSE
clients in processes of their own. Every client must get every entry exactly once, in order."""

from __future__ import annotations

import multiprocessing
import random
import threading
import time
from pathlib import Path

import pytest
import redis

from broker import SyncPublisher
from gateway.cli.redis_server import RedisServer
from tests.support.gateway_process import GatewayProcess
from tests.support.helpers import read_job
from tests.support.sse_client import follow

pytestmark = pytest.mark.slow
WORKERS, PROCESSES, ENTRIES = 301, 4, 50


def _publisher(url: str, job: str, proc: int) -> None:
    with SyncPublisher(url) as pub:
        step = pub.job(job, name="Fan-out 301", type="manager").step("fan_out")
        mine = [w for w in range(WORKERS) if w % PROCESSES == proc]

        def work(w: int) -> None:
            worker = step.worker(f"w-{w}")
            worker.status("running")
            for i in range(ENTRIES):
                worker.info(f"w-{w} item {i}", i=i)
            worker.status("completed")

        threads = [threading.Thread(target=work, args=(w,)) for w in mine]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def _client(args: tuple[str, str, float, int, int]) -> tuple[list[str], int]:
    base, job, delay_s, delay_for, disconnect_every = args
    events, connections = follow(
        base, job, delay_s=delay_s, delay_for=delay_for, disconnect_every=disconnect_every
    )
    return [e.id for e in events], connections


def _publish_all(url: str, job: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_publisher, args=(url, job, p)) for p in range(PROCESSES)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * PROCESSES
    with SyncPublisher(url) as pub:
        pub.job(job).end("completed")


def _run_clients(
    gateway: GatewayProcess, job: str, specs: list[tuple[float, int, int]], during: object = None
) -> list[tuple[list[str], int]]:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(len(specs)) as pool:
        pending = pool.map_async(_client, [(gateway.url, job, *spec) for spec in specs])
        time.sleep(1.0)  # clients are connected and waiting for a job that does not exist yet
        if callable(during):
            during()
        return pending.get(timeout=240)


def test_fan_out_301_workers_to_20_clients_5_slow(redis_server: RedisServer, tmp_path: Path) -> None:
    gateway = GatewayProcess(redis_server.url, tmp_path / "gw.log", ring_entries=2000).start()
    try:
        specs = [(0.0, 0, 0)] * 15 + [(0.002, 3000, 0)] * 5  # slow: 500 entries/s for their first 3000
        results = _run_clients(gateway, "fan301", specs, lambda: _publish_all(redis_server.url, "fan301"))
    finally:
        gateway.stop()
    stored = [e["id"] for e in read_job(redis.Redis.from_url(redis_server.url), "fan301")]
    assert len(stored) == WORKERS * (ENTRIES + 2) + 1
    for i, (ids, _) in enumerate(results):
        assert ids == stored, f"client {i} ({'slow' if i >= 15 else 'fast'}) missed, repeated or reordered"


def test_resume_across_random_disconnects_and_a_gateway_restart(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    gateway = GatewayProcess(redis_server.url, tmp_path / "gw.log", ring_entries=500).start()
    rng = random.Random(7)
    specs = [(0.001, 2000, rng.randint(300, 3000)) for _ in range(8)] + [(0.0, 0, 0)] * 4

    def publish_and_restart() -> None:
        publisher = threading.Thread(target=_publish_all, args=(redis_server.url, "resume301"))
        publisher.start()
        time.sleep(1.0)
        gateway.kill()  # SIGKILL mid-stream: clients must resume from their own Last-Event-ID
        time.sleep(0.5)
        gateway.start()
        publisher.join()

    try:
        results = _run_clients(gateway, "resume301", specs, publish_and_restart)
    finally:
        gateway.stop()
    stored = [e["id"] for e in read_job(redis.Redis.from_url(redis_server.url), "resume301")]
    for i, (ids, connections) in enumerate(results):
        assert ids == stored, f"client {i}: union of its connections is not exactly the stream"
        assert connections >= 2, f"client {i} never had to reconnect"
