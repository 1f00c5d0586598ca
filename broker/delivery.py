"""Talking to Redis for the publishers: the write call, error classes and retry pacing.

Third-party errors are classified here and nowhere else: a *retryable* failure (connection lost,
timeout, Redis loading its AOF, failover in progress, out of memory) keeps the batch and tries it
again with the same ``seq`` values; anything else is a permanent rejection that is counted and
reported, never silently swallowed.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

from .config import PublisherConfig
from .constants import BACKOFF_INITIAL_MS, BACKOFF_MAX_MS
from .outbox import Batch
from .script import WRITE_BATCH_LUA, WRITE_BATCH_SHA, Retention, WriteResult, parse_reply, write_args

Outcome = WriteResult | BaseException
# A plain client or a Redis Cluster one: every write touches one job, so one slot (DESIGN §3)
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


async def write_async(client: AsyncRedis, batches: Sequence[Batch], retention: Retention) -> list[Outcome]:
    """One round trip for all batches; a Redis that lost its script cache gets it again."""
    commands = _commands(batches, retention)
    replies = await _evalsha_async(client, commands)
    if any(_is_noscript(r) for r in replies):
        await load_script_async(client)
        replies = await _evalsha_async(client, commands)
    return [_outcome(r) for r in replies]


async def _evalsha_async(client: AsyncRedis, commands: list[list[Any]]) -> list[object]:
    if len(commands) == 1:
        try:
            return [await call_async(client, "EVALSHA", WRITE_BATCH_SHA, *commands[0])]
        except redis.ResponseError as e:
            return [e]
    pipe = client.pipeline(transaction=False)
    for args in commands:
        pipe.execute_command("EVALSHA", WRITE_BATCH_SHA, *args)
    return list(await pipe.execute(raise_on_error=False))


def write_sync(client: SyncRedis, batches: Sequence[Batch], retention: Retention) -> list[Outcome]:
    commands = _commands(batches, retention)
    replies = _evalsha_sync(client, commands)
    if any(_is_noscript(r) for r in replies):
        load_script_sync(client)
        replies = _evalsha_sync(client, commands)
    return [_outcome(r) for r in replies]


def _evalsha_sync(client: SyncRedis, commands: list[list[Any]]) -> list[object]:
    if len(commands) == 1:
        try:
            return [call_sync(client, "EVALSHA", WRITE_BATCH_SHA, *commands[0])]
        except redis.ResponseError as e:
            return [e]
    pipe = client.pipeline(transaction=False)
    for args in commands:
        pipe.execute_command("EVALSHA", WRITE_BATCH_SHA, *args)  # type: ignore[no-untyped-call,unused-ignore]
    return list(pipe.execute(raise_on_error=False))


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
    return redis.asyncio.Redis.from_url(
        url,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=30,
        socket_timeout=t,
        socket_connect_timeout=ct,
    )


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
