"""``fanout.py``'s workload, which ``latency_c.py`` runs too: the sizes of a run, fresh jobs, and the
publisher in this process (a burst as fast as it goes, or paced with a ``t_ns`` stamp per entry).

Both scripts import this module and ``harness``; ``fanout.py`` also imports ``latency_c`` (part 2's
C clients), and nothing here imports either of them.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass
from typing import Any

from harness import message

from broker import Publisher, WorkerHandle

WORKERS = 8


@dataclass(frozen=True, slots=True)
class Sizes:
    """Every size of one run, so --smoke and the full run differ only here."""

    clients: int = 100
    client_processes: int = 4
    entries: int = 50_000
    rate: int = 10_000
    seconds: float = 5.0
    parsing_clients: int = 10
    slow_clients: int = 1000
    normal_clients: int = 5
    slow_entries: int = 20_000
    settle_s: float = 3.0
    timeout_s: float = 300.0


# part 3 of the smoke run still sends each slow client ~10 MB: more than Linux's 4 MB autotuned
# send buffer (tcp_wmem max), so the clients really stall the gateway rather than the kernel
SMOKE = Sizes(
    clients=8, client_processes=2, entries=2_000, seconds=1.0, parsing_clients=2,
    slow_clients=50, normal_clients=2, slow_entries=8_000, settle_s=1.0, timeout_s=60.0,
)  # fmt: skip


def new_job(label: str) -> str:
    """A fresh job per measurement: clients always start on a job that does not exist yet."""
    return f"fanout-{label}-{secrets.token_hex(3)}"


def _workers(pub: Publisher, job: str) -> tuple[Any, list[WorkerHandle[Any]]]:
    """One job, spread over steps and workers, as a real job's entries are."""
    handle = pub.job(job, name="Fan-out benchmark", type="benchmark")
    workers = [handle.step(f"step-{w % 4}").worker(f"w-{w}") for w in range(WORKERS)]
    return handle, workers


async def publish_burst(url: str, job: str, n: int, size: int) -> float:
    """``n`` entries as fast as the publisher goes, then the end entry; returns the start time."""
    async with Publisher(url) as pub:
        handle, workers = _workers(pub, job)
        start = time.monotonic()
        for i in range(n):
            await workers[i % WORKERS].info(message(i, size))
        await handle.end("completed")
        report = await pub.flush()
    if report.pending:
        raise RuntimeError(f"publisher could not deliver {report.pending} entries")
    return start


async def publish_paced(url: str, job: str, rate: int, seconds: float) -> float:
    """``rate`` entries/s for ``seconds``, each stamped with ``t_ns``; returns the achieved rate."""
    total = int(rate * seconds)
    async with Publisher(url) as pub:
        handle, workers = _workers(pub, job)
        start = time.monotonic()
        i = 0
        while i < total:
            due = min(total, int((time.monotonic() - start) * rate) + 1)
            while i < due:
                await workers[i % WORKERS].info(message(i), t_ns=time.time_ns())
                i += 1
            await asyncio.sleep(0.001)
        elapsed = time.monotonic() - start
        await handle.end("completed")
        report = await pub.flush()
    if report.pending:
        raise RuntimeError(f"publisher could not deliver {report.pending} entries")
    return total / elapsed
