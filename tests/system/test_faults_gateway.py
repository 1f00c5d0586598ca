"""Fault battery with real processes: a gateway killed under 50 clients, Redis frozen with
SIGSTOP, a publisher SIGKILLed mid-batch and restarted with the same src, the client limit."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest
import redis

from gateway.api.state import GATEWAY
from gateway.cli.redis_server import RedisServer
from tests.support.fixture_types import MakeGateway, ServerFactory
from tests.support.gateway_process import GatewayProcess
from tests.support.helpers import read_job
from tests.support.jobs import publish_paced
from tests.support.paths import ROOT
from tests.support.sse_client import follow_many, parse

pytestmark = pytest.mark.slow


def test_kill_9_a_gateway_under_50_clients_they_resume_on_the_other(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    first = GatewayProcess(redis_server.url, tmp_path / "gw1.log").start()
    second = GatewayProcess(redis_server.url, tmp_path / "gw2.log").start()
    try:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(10) as pool:
            pending = pool.map_async(follow_many, [([first.url, second.url], "k9", 5)] * 10)
            deadline = time.monotonic() + 30
            while httpx.get(f"{first.url}/readyz").json()["clients"] < 50:
                assert time.monotonic() < deadline, "50 clients did not connect"
                time.sleep(0.1)
            publisher = threading.Thread(target=publish_paced, args=(redis_server.url, "k9", 5000, 0.01))
            publisher.start()
            time.sleep(1.0)
            first.kill()
            publisher.join()
            results = [ids for batch in pending.get(timeout=120) for ids, _ in batch]
        served_by_second = httpx.get(f"{second.url}/metrics").text
    finally:
        first.stop()
        second.stop()
    stored = [e["id"] for e in read_job(redis.Redis.from_url(redis_server.url), "k9")]
    assert len(stored) == 5001
    assert len(results) == 50
    for ids in results:
        assert ids == stored, "0 lost, 0 duplicated, in order"
    assert "logbroker_sse_entries_sent_total 0.0" not in served_by_second


async def test_redis_frozen_for_5s_clients_stay_and_everything_arrives(
    make_gateway: MakeGateway, redis_server: RedisServer
) -> None:
    client = await make_gateway(heartbeat_s=0.5)
    streams = [await client.get("/v1/jobs/frozen/stream") for _ in range(5)]
    pub_thread = threading.Thread(target=publish_paced, args=(redis_server.url, "frozen", 3000, 0.02))
    pub_thread.start()
    await asyncio.sleep(0.5)
    redis_server.pause()
    try:
        await asyncio.sleep(1.0)
        assert (await client.get("/readyz")).status == 503
        heartbeats = [await asyncio.wait_for(s.content.readuntil(b": heartbeat\n\n"), 5) for s in streams]
        assert all(heartbeats), "connected clients keep getting heartbeats while Redis is frozen"
        await asyncio.sleep(3.5)
    finally:
        redis_server.resume()
    await asyncio.to_thread(pub_thread.join)
    bodies = [h + await asyncio.wait_for(s.read(), 60) for h, s in zip(heartbeats, streams, strict=True)]
    assert (await client.get("/readyz")).status == 200
    stored = [e["id"] for e in read_job(redis.Redis.from_url(redis_server.url), "frozen")]
    assert len(stored) == 3001
    for body in bodies:
        assert [e.id for e in parse(body).events] == stored


WORKER = textwrap.dedent(
    """
    import sys
    from broker import PublisherConfig, SyncPublisher
    url, job, total, confirmed = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    pub = SyncPublisher(url, config=PublisherConfig(src="worker-7", max_batch_entries=50))
    start = pub.resume(job) + 1  # item i is seq i: resume exactly after what Redis holds
    worker = pub.job(job).step("s").worker("w-7")
    for i in range(start, total + 1):
        worker.info(f"item {i}", i=i)
        if i % 100 == 0:
            assert pub.flush(30).ok
            with open(confirmed, "a") as f:
                f.write(f"{i}\\n")
    assert pub.close(30).ok
    """
)


def test_publisher_killed_mid_batch_resumes_with_the_same_src(
    redis_server_factory: ServerFactory, tmp_path: Path
) -> None:
    server = redis_server_factory(appendonly=True, appendfsync="always")
    confirmed = tmp_path / "confirmed"
    cmd = [sys.executable, "-c", WORKER, server.url, "sk", "5000", str(confirmed)]
    first = subprocess.Popen(cmd, cwd=ROOT)
    deadline = time.monotonic() + 60
    while (not confirmed.exists() or len(confirmed.read_text().split()) < 10) and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    confirmed_before_kill = [int(x) for x in confirmed.read_text().split()]
    second = subprocess.run(cmd, cwd=ROOT, timeout=120)
    assert second.returncode == 0
    entries = read_job(redis.Redis.from_url(server.url), "sk")
    items = [e["fields"]["i"] for e in entries]  # type: ignore[index]
    assert items == list(range(1, 5001)), "every item exactly once, in order"
    assert [e["seq"] for e in entries] == items and {e["src"] for e in entries} == {"worker-7"}
    assert max(confirmed_before_kill) <= 5000 and len(confirmed_before_kill) >= 10


async def test_client_limit_answers_503_with_retry_after(make_gateway: MakeGateway) -> None:
    client = await make_gateway(max_clients=2, heartbeat_s=0.2)
    open_streams = [await client.get("/v1/jobs/limit/stream") for _ in range(2)]
    for _ in range(50):
        if len(client.app[GATEWAY].hub.subscribers) == 2:
            break
        await asyncio.sleep(0.02)
    refused = await client.get("/v1/jobs/limit/stream")
    assert refused.status == 503 and refused.headers["Retry-After"] == "5"
    assert (await refused.json())["error"]["code"] == "too_many_clients"
    for s in open_streams:
        s.close()
