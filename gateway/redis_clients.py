"""Redis clients of a gateway (plain, Redis Cluster or through Sentinel): a shared client for
reads, one for writes, and for each partition reader a single connection that blocks on the
master holding its slot, plus a second one to the same node to wake it (CLIENT UNBLOCK).

The shared clients draw from a bounded pool that makes a request *wait* for a free connection
(up to ``redis_pool_timeout_s``) instead of failing: redis-py's default pool refuses the 101st
concurrent command, which a busy gateway answered as 503 while Redis was healthy. Reads are
retried once on a fresh connection when a pooled one turns out dead (Redis restarted); writes are
not, since a write whose reply was lost may have been applied (ingest's src/seq retry is the
client's, and says so).
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from broker.config import sentinel_addresses

from .settings import GatewaySettings

AnyRedis = redis.asyncio.Redis | RedisCluster
_SHARED: dict[str, Any] = {"socket_timeout": 10, "socket_connect_timeout": 2}


class Connector:
    def __init__(self, settings: GatewaySettings, url: str) -> None:
        self.settings = settings
        self.url = url
        self._sentinel: Sentinel | None = None
        if settings.sentinels:
            addresses = sentinel_addresses(settings.sentinels)
            self._sentinel = Sentinel(addresses, socket_timeout=2, socket_connect_timeout=2)  # type: ignore[no-untyped-call,unused-ignore]

    async def aclose(self) -> None:
        if self._sentinel is not None:
            for client in self._sentinel.sentinels:
                await client.aclose()

    def shared(self, *, retry_once: bool = True) -> AnyRedis:
        """A client on the bounded pool; ``retry_once``: a command that fails on a dead pooled
        connection is sent once more, on a new one (reads only: see the module docstring)."""
        s = self.settings
        retries = 1 if retry_once else 0
        if s.redis_cluster:
            return RedisCluster.from_url(self.url, max_connections=s.redis_max_connections, **_SHARED)
        options: dict[str, Any] = {**_SHARED, "retry": Retry(NoBackoff(), retries)}
        if self._sentinel is not None:
            return self._master(max_connections=s.redis_max_connections, **options)
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            self.url, max_connections=s.redis_max_connections, timeout=s.redis_pool_timeout_s,
            health_check_interval=30, **options,
        )  # fmt: skip
        return redis.asyncio.Redis.from_pool(pool)  # closing the client closes its pool

    def _master(self, single: bool = False, **options: Any) -> redis.asyncio.Redis:
        """The current master, whichever it is after a failover."""
        assert self._sentinel is not None
        name = self.settings.sentinel_master or ""
        client: redis.asyncio.Redis = self._sentinel.master_for(name, **options)  # type: ignore[no-untyped-call,unused-ignore]
        if single:  # master_for() hands its options to connections, so wrap its pool instead
            return redis.asyncio.Redis(connection_pool=client.connection_pool, single_connection_client=True)
        return client

    async def reader(
        self, shared: AnyRedis, slot_key: str
    ) -> tuple[redis.asyncio.Redis, redis.asyncio.Redis]:
        """(reader, control): in a cluster both go to the master that owns ``slot_key`` now (the
        slot map is refreshed first, so a failover is followed)."""
        options: dict[str, Any] = {
            "socket_timeout": self.settings.read_block_ms / 1000 + 5,
            "socket_connect_timeout": 2,
        }
        control: dict[str, Any] = {"socket_timeout": 5, "socket_connect_timeout": 2}
        if isinstance(shared, RedisCluster):
            await shared.initialize()
            await shared.nodes_manager.initialize()
            node = shared.get_node_from_key(slot_key)
            if node is None:
                raise redis.ConnectionError(f"no cluster node owns the slot of {slot_key}")
            host, port = node.host, int(node.port)
            return (
                redis.asyncio.Redis(host=host, port=port, single_connection_client=True, **options),
                redis.asyncio.Redis(host=host, port=port, **control),
            )
        if self._sentinel is not None:
            return self._master(single=True, **options), self._master(**control)
        return (
            redis.asyncio.Redis.from_url(self.url, single_connection_client=True, **options),
            redis.asyncio.Redis.from_url(self.url, **control),
        )
