"""Failover with replica acknowledgements (docs/design.md §7): a Sentinel-managed master and a Redis
Cluster master are SIGKILLed while publishers run with ``replica_acks=1``; after the replica is
promoted, every entry a flush() confirmed is there, and nothing is there twice."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster

from broker import Keyspace, PublisherConfig, SyncPublisher, decode_entry
from gateway.api import create_app
from gateway.cli.redis_server import RedisServer, free_port
from gateway.settings import GatewaySettings
from tests.support.cluster import RedisClusterProcesses
from tests.support.fixture_types import AiohttpClient
from tests.support.helpers import assert_exactly_once, read_job
from tests.support.servers import ServerKind
from tests.support.sse_client import parse

pytestmark = [pytest.mark.slow, pytest.mark.server_matrix]
ENTRIES, THREADS = 3000, 3


class SentinelSet:
    """A master, two replicas and three Sentinels watching them (quorum 2). Two replicas, so that
    after a failover the new master still has one to acknowledge writes."""

    def __init__(self, root: Path, binary: str) -> None:
        self.binary = binary
        self.master = RedisServer(root / "master", appendonly=True, binary=binary)
        self.replicas = [
            RedisServer(root / f"replica{i}", appendonly=True, binary=binary,
                        extra_args=("--replicaof", "127.0.0.1", str(self.master.port)))
            for i in range(2)
        ]  # fmt: skip
        self.root = root
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels: list[subprocess.Popen[bytes]] = []

    def start(self) -> SentinelSet:
        self.master.start()
        for replica in self.replicas:
            replica.start()
        for i, port in enumerate(self.sentinel_ports):
            conf = self.root / f"sentinel{i}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.root}\n"
                f"sentinel monitor lb 127.0.0.1 {self.master.port} 2\n"
                "sentinel down-after-milliseconds lb 1000\nsentinel failover-timeout lb 5000\n"
            )
            self.sentinels.append(subprocess.Popen([self.binary, str(conf), "--sentinel"],
                                                   stdout=subprocess.DEVNULL))  # fmt: skip
        deadline = time.monotonic() + 20
        while not self._replica_synced():
            assert time.monotonic() < deadline, "replica did not sync"
            time.sleep(0.1)
        return self

    def _replica_synced(self) -> bool:
        for replica in self.replicas:
            with redis.Redis(port=replica.port) as r:
                if r.info("replication").get("master_link_status") != "up":
                    return False
        return True

    def current_master_port(self) -> int:
        with redis.Redis(port=self.sentinel_ports[0]) as s:
            return int(s.sentinel_get_master_addr_by_name("lb")[1])

    def stop(self) -> None:
        for p in self.sentinels:
            p.terminate()
            p.wait(10)
        self.master.stop()
        for replica in self.replicas:
            replica.stop()


@pytest.fixture
def sentinel_set(tmp_path: Path, server_kind: ServerKind) -> Iterator[SentinelSet]:
    s = SentinelSet(tmp_path, server_kind.binary).start()
    yield s
    s.stop()


def _publish_confirming(pub: SyncPublisher, job: str, confirmed: list[int]) -> list[threading.Thread]:
    """Threads publish; after every flush, how many entries were confirmed is recorded."""
    lock = threading.Lock()

    def run(t: int) -> None:
        worker = pub.job(job, name="Failover").step("s").worker(f"w{t}")
        for i in range(ENTRIES):
            worker.info(f"w{t} {i}", i=i)
            if i % 250 == 249:
                report = pub.flush(60)
                with lock:
                    confirmed.append(report.delivered)
            time.sleep(0.0005)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    return threads


def _join(threads: list[threading.Thread], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for thread in threads:
        thread.join(max(0.1, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "publishing did not recover from the failover"


def _check(entries: list[dict[str, object]], confirmed: list[int]) -> None:
    logs = [e for e in entries if e["kind"] == "log"]
    assert len(logs) == ENTRIES * THREADS and max(confirmed) <= len(logs)
    for t in range(THREADS):
        got = [e["fields"]["i"] for e in logs if e["worker"] == f"w{t}"]  # type: ignore[index]
        assert got == list(range(ENTRIES)), f"w{t}: lost or duplicated across the failover"
    assert_exactly_once(entries)  # type: ignore[arg-type]


def _check_stream(events: list[Any], entries: list[dict[str, Any]]) -> None:
    """What a client can be promised across a failover with asynchronous replication: every
    stored entry arrives, once, in order. It may also have seen entries the dead master had not
    replicated yet (the publisher, unconfirmed, writes them again): those extras are never
    invented, each is an earlier copy of a stored entry (same src and seq)."""
    stored = [e["id"] for e in entries]
    received = [e.id for e in events]
    it = iter(received)
    assert all(i in it for i in stored), "every stored entry reaches the client, in order"
    keys = {(e["src"], e["seq"]) for e in entries}
    extras = [e.json() for e in events if e.id not in set(stored)]
    assert all((x["src"], x["seq"]) in keys for x in extras), "a client never sees an invented entry"
    assert len(received) == len(set(received)), "no stream id twice"


def test_sentinel_failover_loses_no_confirmed_entry(sentinel_set: SentinelSet) -> None:
    config = PublisherConfig(
        sentinels=tuple(f"127.0.0.1:{p}" for p in sentinel_set.sentinel_ports), sentinel_master="lb",
        replica_acks=1, replica_ack_timeout_ms=2000, socket_timeout_s=5, connect_timeout_s=1,
    )  # fmt: skip
    pub = SyncPublisher(config=config)
    pub.start()
    confirmed: list[int] = []
    threads = _publish_confirming(pub, "sfail", confirmed)
    while len(confirmed) < 6:
        time.sleep(0.01)
    old = sentinel_set.master.port
    sentinel_set.master.kill()
    _join(threads, 90)
    assert pub.close(60).ok
    new = sentinel_set.current_master_port()
    assert new != old and new in [r.port for r in sentinel_set.replicas]
    _check(read_job(redis.Redis(port=new), "sfail"), confirmed)  # type: ignore[arg-type]


@pytest.mark.server_matrix(first_only=True)  # 25-30 s of cluster timeouts; Cluster itself runs on all
async def test_cluster_master_failover_with_replica_acks_while_streaming(
    tmp_path: Path, aiohttp_client: AiohttpClient, server_kind: ServerKind
) -> None:
    # two replicas: one is left after the failover
    cluster = RedisClusterProcesses(tmp_path / "cluster", replicas=2, binary=server_kind.binary).start()
    try:
        gateway = await aiohttp_client(create_app(GatewaySettings(redis_url=cluster.url, redis_cluster=True)))
        streams = [await gateway.get("/v1/jobs/cfail/stream") for _ in range(3)]
        config = PublisherConfig(
            cluster=True, replica_acks=1, replica_ack_timeout_ms=2000, socket_timeout_s=5
        )
        pub = SyncPublisher(cluster.url, config=config)
        await asyncio.to_thread(pub.start)
        rc = RedisCluster.from_url(cluster.url)
        victim = rc.get_node_from_key(Keyspace().stream("cfail")).port
        rc.close()
        confirmed: list[int] = []
        threads = _publish_confirming(pub, "cfail", confirmed)
        while len(confirmed) < 6:  # noqa: ASYNC110 - the publishing threads fill it
            await asyncio.sleep(0.01)
        next(s for s in cluster.servers if s.port == victim).kill()  # the job's master, mid-stream
        await asyncio.to_thread(_join, threads, 90)
        await asyncio.to_thread(pub.job("cfail").end, "completed")
        assert (await asyncio.to_thread(pub.close, 60)).ok
        bodies = [await asyncio.wait_for(s.read(), 60) for s in streams]
        rc = RedisCluster(host="127.0.0.1", port=next(s.port for s in cluster.servers if s.port != victim))
        assert rc.get_node_from_key(Keyspace().stream("cfail")).port != victim, "a replica took over"
        entries = [decode_entry("cfail", i.decode(), f) for i, f in rc.xrange(Keyspace().stream("cfail"))]
        rc.close()
        _check(entries, confirmed)  # type: ignore[arg-type]
        for body in bodies:
            _check_stream(parse(body).events, entries)  # type: ignore[arg-type]
    finally:
        cluster.stop()


async def test_gateway_through_sentinel_streams_across_a_failover(
    sentinel_set: SentinelSet, aiohttp_client: AiohttpClient
) -> None:
    sentinels = tuple(f"127.0.0.1:{p}" for p in sentinel_set.sentinel_ports)
    settings = GatewaySettings(sentinels=sentinels, sentinel_master="lb", heartbeat_s=0.5)
    gateway = await aiohttp_client(create_app(settings))
    streams = [await gateway.get("/v1/jobs/sgw/stream") for _ in range(3)]
    config = PublisherConfig(
        sentinels=sentinels,
        sentinel_master="lb",
        replica_acks=1,
        replica_ack_timeout_ms=2000,
        socket_timeout_s=5,
    )
    pub = SyncPublisher(config=config)
    await asyncio.to_thread(pub.start)
    confirmed: list[int] = []
    threads = _publish_confirming(pub, "sgw", confirmed)
    while len(confirmed) < 6:  # noqa: ASYNC110 - the publishing threads fill it
        await asyncio.sleep(0.01)
    sentinel_set.master.kill()
    await asyncio.to_thread(_join, threads, 90)
    await asyncio.to_thread(pub.job("sgw").end, "completed")
    assert (await asyncio.to_thread(pub.close, 60)).ok
    bodies = [await asyncio.wait_for(s.read(), 60) for s in streams]
    entries = read_job(redis.Redis(port=sentinel_set.current_master_port()), "sgw")
    _check(entries, confirmed)  # type: ignore[arg-type]
    for body in bodies:
        _check_stream(parse(body).events, entries)  # type: ignore[arg-type]
