"""Talking to Redis for the publishers: the write call, error classes and retry pacing.

Third-party errors are classified here and nowhere else: a *retryable* failure (connection lost,
timeout, Redis loading its AOF, failover in progress, out of memory) keeps the batch and tries it
again with the same ``seq`` values; anything else is a permanent rejection that is counted and
reported, never silently swallowed.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import weakref
from collections.abc import Sequence
from typing import Any, cast

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

from .config import PublisherConfig, sentinel_addresses
from .constants import BACKOFF_INITIAL_MS, BACKOFF_MAX_MS, CONNECT_ATTEMPTS
from .outbox import Batch
from .script import (
    WRITE_BATCH_LUA,
    WRITE_BATCH_SHA,
    Durability,
    Retention,
    WriteResult,
    parse_reply,
    write_args,
)

log = logging.getLogger(__name__)
Outcome = WriteResult | BaseException
# A plain client or a Redis Cluster one: every write touches one job, so one slot (docs/design.md §3)
AsyncRedis = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster
SyncRedis = redis.Redis | redis.cluster.RedisCluster

_RETRYABLE_REPLIES = (
    "LOADING",
    "BUSY",
    "READONLY",
    "MASTERDOWN",
    "CLUSTERDOWN",
    "TRYAGAIN",
    "OOM",
    "NOREPLICAS",
    "MOVED",
    "ASK",
    "NOSCRIPT",
)


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, redis.ResponseError):
        return str(exc).startswith(_RETRYABLE_REPLIES)
    return isinstance(exc, redis.RedisError | OSError | asyncio.TimeoutError | TimeoutError)


def _is_noscript(outcome: object) -> bool:
    return isinstance(outcome, redis.exceptions.NoScriptError) or (
        isinstance(outcome, redis.ResponseError) and str(outcome).startswith("NOSCRIPT")
    )


def _commands(batches: Sequence[Batch], retention: Retention) -> list[list[Any]]:
    return [write_args(b.job, b.keys, b.items, retention, b.job_name, b.job_type) for b in batches]


def _outcome(reply: object) -> Outcome:
    return reply if isinstance(reply, BaseException) else parse_reply(reply)


NO_WAIT = Durability()


def _acked(replies: list[object], acked: object, want: Durability) -> list[object]:
    """Stored but not replicated enough is a retryable failure: the retry finds the entries stored
    (so skips them) and waits for replicas again."""
    n = acked if isinstance(acked, int) else 0
    if n >= want.replicas:
        return replies
    err = redis.ResponseError(
        f"NOREPLICAS {n} of {want.replicas} replicas acknowledged in {want.timeout_ms} ms"
    )
    return [r if isinstance(r, BaseException) else err for r in replies]


async def write_async(
    client: AsyncRedis, batches: Sequence[Batch], retention: Retention, want: Durability = NO_WAIT
) -> list[Outcome]:
    """One round trip for all batches; a Redis that lost its script cache gets it again."""
    commands = _commands(batches, retention)
    replies = await _evalsha_async(client, commands, want)
    if any(_is_noscript(r) for r in replies):
        await load_script_async(client)
        replies = await _evalsha_async(client, commands, want)
    return [_outcome(r) for r in replies]


async def _evalsha_async(client: AsyncRedis, commands: list[list[Any]], want: Durability) -> list[object]:
    if isinstance(client, redis.asyncio.cluster.RedisCluster):
        if not want.replicas:  # the cluster pipeline routes each batch to its slot's master
            return await _pipeline_async(client, commands, want)
        return await _per_node_async(client, commands, want)
    if len(commands) == 1 and not want.replicas:
        try:
            return [await call_async(client, "EVALSHA", WRITE_BATCH_SHA, *commands[0])]
        except redis.ResponseError as e:
            return [e]
    return await _pipeline_async(client, commands, want)


async def _pipeline_async(client: AsyncRedis, commands: list[list[Any]], want: Durability) -> list[object]:
    pipe = client.pipeline(transaction=False)
    for args in commands:
        pipe.execute_command("EVALSHA", WRITE_BATCH_SHA, *args)
    if want.replicas:
        pipe.execute_command("WAIT", want.replicas, want.timeout_ms)
    replies = list(await pipe.execute(raise_on_error=False))
    return _acked(replies[:-1], replies[-1], want) if want.replicas else replies


async def _per_node_async(
    client: redis.asyncio.cluster.RedisCluster, commands: list[list[Any]], want: Durability
) -> list[object]:
    """WAIT must follow the writes on the same connection, so each master gets its own pipeline."""
    groups: dict[tuple[str, int], list[int]] = {}
    for i, args in enumerate(commands):
        node = client.get_node_from_key(args[1])
        groups.setdefault((node.host, int(node.port)) if node else ("", 0), []).append(i)
    out: list[object] = [None] * len(commands)
    for (host, port), idxs in groups.items():
        try:
            node_client = _node_clients(client).setdefault(
                (host, port), redis.asyncio.Redis(host=host, port=port)
            )
            replies = await _pipeline_async(node_client, [commands[i] for i in idxs], want)
        except (redis.RedisError, OSError) as e:
            replies = [e] * len(idxs)
        for i, reply in zip(idxs, replies, strict=True):
            out[i] = reply
    if any(isinstance(r, BaseException) for r in out):
        await client.initialize()  # slots may have moved (failover): look again before the retry
        await client.nodes_manager.initialize()
    return out


_NODE_CLIENTS: weakref.WeakKeyDictionary[object, dict[tuple[str, int], Any]] = weakref.WeakKeyDictionary()


def _node_clients(cluster: object) -> dict[tuple[str, int], Any]:
    return _NODE_CLIENTS.setdefault(cluster, {})


def write_sync(
    client: SyncRedis, batches: Sequence[Batch], retention: Retention, want: Durability = NO_WAIT
) -> list[Outcome]:
    commands = _commands(batches, retention)
    replies = _evalsha_sync(client, commands, want)
    if any(_is_noscript(r) for r in replies):
        load_script_sync(client)
        replies = _evalsha_sync(client, commands, want)
    return [_outcome(r) for r in replies]


def _evalsha_sync(client: SyncRedis, commands: list[list[Any]], want: Durability) -> list[object]:
    if isinstance(client, redis.cluster.RedisCluster):
        if not want.replicas:
            return _pipeline_sync(client, commands, want)
        return _per_node_sync(client, commands, want)
    if len(commands) == 1 and not want.replicas:
        try:
            return [call_sync(client, "EVALSHA", WRITE_BATCH_SHA, *commands[0])]
        except redis.ResponseError as e:
            return [e]
    return _pipeline_sync(client, commands, want)


def _pipeline_sync(client: SyncRedis, commands: list[list[Any]], want: Durability) -> list[object]:
    pipe = client.pipeline(transaction=False)
    for args in commands:
        pipe.execute_command("EVALSHA", WRITE_BATCH_SHA, *args)  # type: ignore[no-untyped-call,unused-ignore]
    if want.replicas:
        pipe.execute_command("WAIT", want.replicas, want.timeout_ms)  # type: ignore[no-untyped-call,unused-ignore]
    replies = list(pipe.execute(raise_on_error=False))
    return _acked(replies[:-1], replies[-1], want) if want.replicas else replies


def _per_node_sync(
    client: redis.cluster.RedisCluster, commands: list[list[Any]], want: Durability
) -> list[object]:
    groups: dict[str, list[int]] = {}
    nodes: dict[str, Any] = {}
    for i, args in enumerate(commands):
        node = client.get_node_from_key(args[1])  # type: ignore[no-untyped-call,unused-ignore]
        nodes[node.name] = node
        groups.setdefault(node.name, []).append(i)
    out: list[object] = [None] * len(commands)
    for name, idxs in groups.items():
        try:
            replies = _pipeline_sync(
                client.get_redis_connection(nodes[name]), [commands[i] for i in idxs], want
            )
        except (redis.RedisError, OSError) as e:
            replies = [e] * len(idxs)
        for i, reply in zip(idxs, replies, strict=True):
            out[i] = reply
    if any(isinstance(r, BaseException) for r in out):
        client.nodes_manager.initialize()  # slots may have moved (failover): look again before the retry
    return out


class Backoff:
    """Exponential backoff with full jitter, so a fleet does not reconnect in lockstep."""

    def __init__(self, initial_ms: int = BACKOFF_INITIAL_MS, max_ms: int = BACKOFF_MAX_MS) -> None:
        self.initial_ms = initial_ms
        self.max_ms = max_ms
        self.failures = 0

    def next_delay_s(self) -> float:
        self.failures += 1
        cap = min(self.max_ms, self.initial_ms * 2 ** min(self.failures - 1, 16))
        return random.uniform(cap / 2, cap) / 1000

    def reset(self) -> None:
        self.failures = 0


# Clients the publisher creates itself: bounded waits, and no hidden retries inside redis-py
# (ours keep the buffer, and pace the whole fleet with jitter).


def sync_client(url: str, config: PublisherConfig) -> SyncRedis:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    t, ct = config.socket_timeout_s, config.connect_timeout_s
    if config.cluster:  # slots move and masters fail over: let the cluster client follow them
        return redis.cluster.RedisCluster.from_url(url, socket_timeout=t, socket_connect_timeout=ct)
    if config.sentinels:  # the current master, whichever it is after a failover
        from redis.sentinel import Sentinel

        return cast(SyncRedis, _master_for(Sentinel, config))
    return redis.Redis.from_url(
        url,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=30,
        socket_timeout=t,
        socket_connect_timeout=ct,
    )


def async_client(url: str, config: PublisherConfig) -> AsyncRedis:
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    t, ct = config.socket_timeout_s, config.connect_timeout_s
    if config.cluster:
        return redis.asyncio.cluster.RedisCluster.from_url(url, socket_timeout=t, socket_connect_timeout=ct)
    if config.sentinels:
        from redis.asyncio.sentinel import Sentinel

        return cast(AsyncRedis, _master_for(Sentinel, config))
    return redis.asyncio.Redis.from_url(
        url,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=30,
        socket_timeout=t,
        socket_connect_timeout=ct,
    )


def _master_for(sentinel_class: Any, config: PublisherConfig) -> Any:
    """A client of the current master, whichever it is after a failover (sync or asyncio Sentinel)."""
    t, ct = config.socket_timeout_s, config.connect_timeout_s
    sentinel = sentinel_class(_addresses(config.sentinels), socket_timeout=t, socket_connect_timeout=ct)
    return sentinel.master_for(config.sentinel_master or "", socket_timeout=t, socket_connect_timeout=ct)


def _addresses(sentinels: tuple[str, ...]) -> list[tuple[str, int]]:
    return sentinel_addresses(sentinels)


# Connect eagerly and fail loudly (publishers and gateways alike): PING and load the write script,
# a few bounded retries with one warning each, then the last error.


async def connect_async(client: AsyncRedis, who: str) -> None:
    for attempt in range(1, CONNECT_ATTEMPTS + 1):
        try:
            await client.ping()
            await load_script_async(client)
            return
        except (redis.RedisError, OSError) as e:
            await asyncio.sleep(_connect_failed(who, e, attempt))


def connect_sync(client: SyncRedis, who: str) -> None:
    for attempt in range(1, CONNECT_ATTEMPTS + 1):
        try:
            client.ping()
            load_script_sync(client)
            return
        except (redis.RedisError, OSError) as e:
            time.sleep(_connect_failed(who, e, attempt))


def _connect_failed(who: str, error: BaseException, attempt: int) -> float:
    """The pause before the next attempt; the error itself after the last one."""
    if attempt == CONNECT_ATTEMPTS:
        raise error
    log.warning("%s: Redis not reachable (%s), attempt %d/%d", who, error, attempt, CONNECT_ATTEMPTS)
    return 0.2 * attempt


async def load_script_async(client: AsyncRedis) -> None:
    """SCRIPT LOAD through the client's own method: a cluster client sends it to every master."""
    await client.script_load(WRITE_BATCH_LUA)  # type: ignore[misc,unused-ignore]


def load_script_sync(client: SyncRedis) -> None:
    client.script_load(WRITE_BATCH_LUA)


async def call_async(client: AsyncRedis, *args: Any) -> Any:
    """``execute_command`` with a type: redis-py leaves it untyped."""
    return await client.execute_command(*args)  # type: ignore[no-untyped-call,unused-ignore]


def call_sync(client: SyncRedis, *args: Any) -> Any:
    return client.execute_command(*args)  # type: ignore[no-untyped-call,unused-ignore]
