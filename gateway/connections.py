"""Redis clients of a gateway: one shared client (plain or Redis Cluster), and direct single
connections for the partition readers, which must block on the node that owns their slot."""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio
from redis.asyncio.cluster import RedisCluster

AnyRedis = redis.asyncio.Redis | RedisCluster


def shared_client(url: str, cluster: bool) -> AnyRedis:
    options: dict[str, Any] = {"socket_timeout": 10, "socket_connect_timeout": 2}
    if cluster:
        return RedisCluster.from_url(url, **options)
    return redis.asyncio.Redis.from_url(url, health_check_interval=30, **options)


async def reader_client(
    shared: AnyRedis, url: str, slot_key: str, socket_timeout_s: float
) -> redis.asyncio.Redis:
    """A single connection for a blocking XREAD: to ``url`` itself, or in a cluster to the master
    that owns ``slot_key`` now (the slot map is refreshed first, so a failover is followed)."""
    options: dict[str, Any] = {
        "single_connection_client": True,
        "socket_timeout": socket_timeout_s,
        "socket_connect_timeout": 2,
    }
    if isinstance(shared, RedisCluster):
        await shared.initialize()
        await shared.nodes_manager.initialize()
        node = shared.get_node_from_key(slot_key)
        if node is None:
            raise redis.ConnectionError(f"no cluster node owns the slot of {slot_key}")
        return redis.asyncio.Redis(host=node.host, port=int(node.port), **options)
    return redis.asyncio.Redis.from_url(url, **options)


def same_node(reader: redis.asyncio.Redis) -> redis.asyncio.Redis:
    """A second client to the reader's node, to send it CLIENT UNBLOCK while it is blocked."""
    kw = reader.connection_pool.connection_kwargs
    return redis.asyncio.Redis(
        host=kw.get("host", "127.0.0.1"), port=kw.get("port", 6379), db=kw.get("db", 0),
        password=kw.get("password"), username=kw.get("username"), socket_connect_timeout=2, socket_timeout=5,
    )  # fmt: skip
