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

from .config import PublisherConfig
from .constants import BACKOFF_INITIAL_MS, BACKOFF_MAX_MS
from .outbox import Batch
from .script import WRITE_BATCH_LUA, WRITE_BATCH_SHA, Retention, WriteResult, parse_reply, write_args

Outcome = WriteResult | BaseException

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


def _commands(batches: Sequence[Batch], retention: Retention) -> list[list[object]]:
    return [write_args(b.job, b.keys, b.items, retention, b.job_name, b.job_type) for b in batches]


def _outcome(reply: object) -> Outcome:
    return reply if isinstance(reply, BaseException) else parse_reply(reply)


async def write_async(
    client: redis.asyncio.Redis, batches: Sequence[Batch], retention: Retention
) -> list[Outcome]:
    """One round trip for all batches; a Redis that lost its script cache gets it again."""
    commands = _commands(batches, retention)
    replies = await _evalsha_async(client, commands)
    if any(_is_noscript(r) for r in replies):
        await call_async(client, "SCRIPT", "LOAD", WRITE_BATCH_LUA)
        replies = await _evalsha_async(client, commands)
    return [_outcome(r) for r in replies]


async def _evalsha_async(client: redis.asyncio.Redis, commands: list[list[object]]) -> list[object]:
    if len(commands) == 1:
        try:
            return [await call_async(client, "EVALSHA", WRITE_BATCH_SHA, *commands[0])]
        except redis.ResponseError as e:
            return [e]
    pipe = client.pipeline(transaction=False)
    for args in commands:
        pipe.execute_command("EVALSHA", WRITE_BATCH_SHA, *args)
    return list(await pipe.execute(raise_on_error=False))


def write_sync(client: redis.Redis, batches: Sequence[Batch], retention: Retention) -> list[Outcome]:
    commands = _commands(batches, retention)
    replies = _evalsha_sync(client, commands)
    if any(_is_noscript(r) for r in replies):
        call_sync(client, "SCRIPT", "LOAD", WRITE_BATCH_LUA)
        replies = _evalsha_sync(client, commands)
    return [_outcome(r) for r in replies]


def _evalsha_sync(client: redis.Redis, commands: list[list[object]]) -> list[object]:
    if len(commands) == 1:
        try:
            return [call_sync(client, "EVALSHA", WRITE_BATCH_SHA, *commands[0])]
        except redis.ResponseError as e:
            return [e]
    pipe = client.pipeline(transaction=False)
    for args in commands:
        pipe.execute_command("EVALSHA", WRITE_BATCH_SHA, *args)  # type: ignore[no-untyped-call]
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


def sync_client(url: str, config: PublisherConfig) -> redis.Redis:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        url,
        retry=Retry(NoBackoff(), 0),
        socket_timeout=config.socket_timeout_s,
        socket_connect_timeout=config.connect_timeout_s,
        health_check_interval=30,
    )


def async_client(url: str, config: PublisherConfig) -> redis.asyncio.Redis:
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return redis.asyncio.Redis.from_url(
        url,
        retry=Retry(NoBackoff(), 0),
        socket_timeout=config.socket_timeout_s,
        socket_connect_timeout=config.connect_timeout_s,
        health_check_interval=30,
    )


async def call_async(client: redis.asyncio.Redis, *args: object) -> Any:
    """``execute_command`` with a type: redis-py leaves it untyped."""
    return await client.execute_command(*args)  # type: ignore[no-untyped-call]


def call_sync(client: redis.Redis, *args: object) -> Any:
    return client.execute_command(*args)  # type: ignore[no-untyped-call]
