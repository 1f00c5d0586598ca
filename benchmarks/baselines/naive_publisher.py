"""The publisher people usually write first: every log entry is its own redis-py pipeline round trip.

Why this exists: ``benchmarks/e2e.py`` reports logbroker's publisher as a multiple of this one, on
the same workload and the same server. It is deliberately the obvious code, not a strawman: the
same asyncio layout as the real benchmark (one coroutine per worker), the same key
(``Keyspace().stream(job)``) and the same stored fields (``l`` and a msgpack body ``b`` packed by
``broker.codec.pack_body``), so the same gateway code and the same clients read either. What it
lacks is everything that makes the real publisher fast and safe: no batching across entries or
workers (one ``XADD`` per pipeline, one round trip per entry), no Lua write script (no per-step
line numbers, no idempotency, no meta or index bookkeeping), no outbox or retries.
"""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio

from broker.codec import pack_body
from broker.constants import KIND_END, KIND_LOG, LEVELS
from broker.keys import Keyspace

INFO = LEVELS["info"]


class NaiveJob:
    """One job's stream key and identity; hands out workers that publish into it."""

    def __init__(self, client: redis.asyncio.Redis, job: str, name: str, type_: str, src: str) -> None:
        self.client = client
        self.job = job
        self.name = name
        self.type = type_
        self.src = src
        self.key = Keyspace().stream(job)

    def worker(self, step: str, worker: str) -> NaiveWorker:
        """A worker handle: it numbers its own lines (the naive stand-in for the script's counters)."""
        return NaiveWorker(self, step, worker)

    async def end(self, status: str = "completed") -> str:
        """The end entry (kind ``end``), which tells the gateway's clients to stop; returns its id."""
        body = pack_body(
            now_ms(), INFO, KIND_END, "", None, None, None, status, self.name, self.type, self.src, None, None
        )
        return await xadd_alone(self.client, self.key, 0, body)


class NaiveWorker:
    """``await worker.info(msg, **fields)``: pack one body, send one pipeline, wait for its reply."""

    def __init__(self, job: NaiveJob, step: str, worker: str) -> None:
        self.job = job
        self.step = step
        self.name = worker
        self.line = 0

    async def info(self, msg: str, **fields: Any) -> str:
        """One entry, one round trip; returns the stream id Redis assigned."""
        self.line += 1
        j = self.job
        body = pack_body(
            now_ms(), INFO, KIND_LOG, msg, self.step, self.name, None, None, j.name, j.type, j.src,
            self.line, fields or None,
        )  # fmt: skip
        return await xadd_alone(j.client, j.key, self.line, body)


async def xadd_alone(client: redis.asyncio.Redis, key: str, line: int, body: bytes) -> str:
    """A pipeline holding a single XADD: what "use a pipeline" turns into when entries come one by one."""
    async with client.pipeline(transaction=False) as pipe:
        pipe.xadd(key, {"l": line, "b": body})
        (entry_id,) = await pipe.execute()
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


def now_ms() -> int:
    """Wall-clock milliseconds, the body's timestamp."""
    return time.time_ns() // 1_000_000
