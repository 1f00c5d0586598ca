"""``e2e.py``'s publishers, the side that runs in the publisher processes: logbroker's async
``Publisher`` or the naive one (``baselines/naive_publisher.py``), one coroutine per worker, all
released at one barrier; and the job's end entry through either.

``e2e.py`` starts the processes (``publisher_main``) and reads their results; nothing here imports it.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier
from typing import Any

import redis.asyncio
from baselines.naive_publisher import NaiveJob
from harness import cpu_self_s, message

from broker import Publisher, WorkerHandle

JOB_NAME, JOB_TYPE, STEP = "Fan-out 301", "benchmark", "fanout"


@dataclass(frozen=True, slots=True)
class PubResult:
    """One publisher process: what it published, when (system-wide monotonic), at what CPU cost."""

    published: int
    pending: int
    start: float
    end: float
    cpu_s: float


def worker_name(w: int) -> str:
    return f"w-{w:03d}"


async def log_ours(worker: WorkerHandle[Any], n: int) -> None:
    """One worker logging as fast as it can, each entry stamped with its publish time."""
    for i in range(n):
        await worker.info(message(i), t_ns=time.time_ns())


async def log_naive(worker: Any, n: int) -> None:
    """The same worker loop through the naive publisher (one round trip per entry)."""
    for i in range(n):
        await worker.info(message(i), t_ns=time.time_ns())


async def timed(barrier: Barrier, coros: list[Coroutine[Any, Any, None]]) -> tuple[float, float]:
    """Wait for everyone at the barrier, then run all workers concurrently; (start, cpu at start)."""
    barrier.wait()  # blocking on purpose: nothing else runs in this loop yet
    start, cpu = time.monotonic(), cpu_self_s()
    await asyncio.gather(*coros)
    return start, cpu


async def publish_ours(url: str, job: str, workers: list[int], n: int, barrier: Barrier) -> PubResult:
    """logbroker's async Publisher: one per process, one coroutine per worker."""
    async with Publisher(url) as pub:
        step = pub.job(job, name=JOB_NAME, type=JOB_TYPE).step(STEP)
        handles = [step.worker(worker_name(w)) for w in workers]
        start, cpu = await timed(barrier, [log_ours(h, n) for h in handles])
        report = await pub.flush()
        end = time.monotonic()
    return PubResult(len(workers) * n, report.pending, start, end, cpu_self_s() - cpu)


async def publish_naive(url: str, job: str, workers: list[int], n: int, barrier: Barrier) -> PubResult:
    """The naive publisher, same layout: one client (connection pool) per process."""
    client = redis.asyncio.Redis.from_url(url)
    try:
        await client.ping()
        naive = NaiveJob(client, job, JOB_NAME, JOB_TYPE, f"naive-{os.getpid()}")
        handles = [naive.worker(STEP, worker_name(w)) for w in workers]
        start, cpu = await timed(barrier, [log_naive(h, n) for h in handles])
        end = time.monotonic()
    finally:
        await client.aclose()
    return PubResult(len(workers) * n, 0, start, end, cpu_self_s() - cpu)


def publisher_main(
    kind: str, url: str, job: str, workers: list[int], n: int, barrier: Barrier,
    results: multiprocessing.Queue[Any],
) -> None:  # fmt: skip
    """Entry point of one publisher process; errors are sent back instead of dying silently."""
    publish = publish_ours if kind == "ours" else publish_naive
    try:
        result: PubResult | str = asyncio.run(publish(url, job, workers, n, barrier))
    except Exception as e:
        barrier.abort()
        result = f"{type(e).__name__}: {e}"
    results.put(result)


async def end_ours(url: str, job: str) -> None:
    """The end entry through logbroker's publisher (the write script adds the job's totals)."""
    async with Publisher(url) as pub:
        await pub.job(job, name=JOB_NAME, type=JOB_TYPE).end("completed")
        report = await pub.flush()
    if report.pending:
        raise RuntimeError("the end entry was not delivered")


async def end_naive(url: str, job: str) -> None:
    """The end entry through the naive publisher."""
    client = redis.asyncio.Redis.from_url(url)
    try:
        await NaiveJob(client, job, JOB_NAME, JOB_TYPE, "naive-main").end("completed")
    finally:
        await client.aclose()
