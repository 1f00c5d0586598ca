"""Redis Cluster (docs/design.md §3, §7): 3 masters + 3 replicas started by the fixture. Jobs spread over
every master, each job's keys stay in one slot, and the gateway's partition readers block on the
node that owns their slot."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.cluster import RedisCluster

from broker import Keyspace, PublisherConfig, SyncPublisher
from gateway.api import create_app
from gateway.settings import GatewaySettings
from tests.support.cluster import RedisClusterProcesses
from tests.support.fixture_types import AiohttpClient
from tests.support.servers import ServerKind
from tests.support.sse_client import parse

pytestmark = [pytest.mark.slow, pytest.mark.server_matrix]
JOBS, ENTRIES = 12, 400


@pytest.fixture
def cluster(tmp_path: Path, server_kind: ServerKind) -> Iterator[RedisClusterProcesses]:
    c = RedisClusterProcesses(tmp_path / "cluster", binary=server_kind.binary).start()
    yield c
    c.stop()


def _publish(url: str, jobs: list[str]) -> None:
    with SyncPublisher(url, config=PublisherConfig(cluster=True)) as pub:
        for i in range(ENTRIES):
            for job in jobs:
                pub.job(job, name="Cluster").step(f"s{i % 2}").worker(f"w{i % 4}").info(f"{job} {i}", i=i)
        for job in jobs:
            pub.job(job).end("completed")


async def test_jobs_spread_over_masters_and_stream_exactly(
    cluster: RedisClusterProcesses, aiohttp_client: AiohttpClient
) -> None:
    jobs = [f"cl-{j}" for j in range(JOBS)]
    client = await aiohttp_client(create_app(GatewaySettings(redis_url=cluster.url, redis_cluster=True)))
    streams = [await client.get(f"/v1/jobs/{job}/stream") for job in jobs]  # waiting for jobs to exist
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_publish, args=(cluster.url, jobs[p::3])) for p in range(3)]
    for p in procs:
        p.start()
    bodies = await asyncio.gather(*(asyncio.wait_for(s.read(), 120) for s in streams))
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]

    rc = RedisCluster.from_url(cluster.url)
    ks = Keyspace()
    owners = {rc.get_node_from_key(ks.stream(job)).port for job in jobs}
    assert len(owners) == 3, "jobs spread over all three masters"
    for job, body in zip(jobs, bodies, strict=True):
        stored = [i.decode() for i, _ in rc.xrange(ks.stream(job))]
        assert len(stored) == ENTRIES + 1
        assert [e.id for e in parse(body).events] == stored, f"{job}: lost, duplicated or reordered"
    meta = await (await client.get(f"/v1/jobs/{jobs[0]}")).json()
    assert meta["entries"] == ENTRIES + 1 and sum(s["entries"] for s in meta["steps"].values()) == ENTRIES
    listed = await (await client.get("/v1/jobs?limit=100")).json()
    assert sorted(j["job"] for j in listed["jobs"]) == sorted(jobs), "the job list merges every partition"
    page = await (await client.get(f"/v1/jobs/{jobs[1]}/logs?limit=5000")).json()
    assert len(page["entries"]) == ENTRIES + 1 and page["next"] is None
    rc.close()


def _migrate_slot(rc: RedisCluster, slot: int, source_port: int, target_port: int) -> None:
    """Move one slot between masters by hand (CLUSTER SETSLOT + MIGRATE), as resharding does."""
    import redis

    src, dst = redis.Redis(port=source_port), redis.Redis(port=target_port)
    src_id, dst_id = (
        src.execute_command("CLUSTER MYID").decode(),
        dst.execute_command("CLUSTER MYID").decode(),
    )
    dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src_id)
    src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", dst_id)
    while keys := src.execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
        src.execute_command("MIGRATE", "127.0.0.1", target_port, "", 0, 5000, "KEYS", *keys)
    for node in (src, dst):
        node.execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)
    src.close()
    dst.close()


MOVING = 3000


def _publish_slowly(url: str, job: str, published: list[int]) -> None:
    with SyncPublisher(url, config=PublisherConfig(cluster=True)) as pub:
        worker = pub.job(job).step("s").worker("w")
        for i in range(MOVING):
            worker.info(f"{job} {i}", i=i)
            published[0] = i + 1
            if i % 20 == 0:
                time.sleep(0.01)
        pub.job(job).end("completed")


async def test_a_slot_moving_to_another_master_mid_stream(
    cluster: RedisClusterProcesses, aiohttp_client: AiohttpClient
) -> None:
    published = [0]
    client = await aiohttp_client(create_app(GatewaySettings(redis_url=cluster.url, redis_cluster=True)))
    stream = await client.get("/v1/jobs/moving/stream")
    rc = RedisCluster.from_url(cluster.url)
    ks = Keyspace()
    slot = rc.keyslot(ks.stream("moving"))
    source = rc.get_node_from_key(ks.stream("moving")).port
    target = next(p for p in cluster.masters() if p != source)
    publisher = asyncio.create_task(asyncio.to_thread(_publish_slowly, cluster.url, "moving", published))
    while published[0] < 300:  # noqa: ASYNC110 - the publishing thread counts
        await asyncio.sleep(0.01)
    await asyncio.to_thread(_migrate_slot, rc, slot, source, target)
    moved_at = published[0]
    await publisher
    assert 300 <= moved_at < MOVING, "the slot moved while entries were being published"
    body = await asyncio.wait_for(stream.read(), 60)
    rc.close()
    rc = RedisCluster.from_url(cluster.url)
    assert rc.get_node_from_key(ks.stream("moving")).port == target
    stored = [i.decode() for i, _ in rc.xrange(ks.stream("moving"))]
    rc.close()
    assert len(stored) == MOVING + 1
    assert [e.id for e in parse(body).events] == stored, "the stream followed the slot without loss"
