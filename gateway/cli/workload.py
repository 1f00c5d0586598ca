"""The job-generator workload of docs/design.md §9, run by worker *processes* (one SyncPublisher each).

Steps run one after another; each step's workers are spread over the processes and run as
threads there. A step's ``completed`` status is written only after every worker process of the
step has flushed, so a step's last entries always come before its completed line.
"""

from __future__ import annotations

import multiprocessing
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.queues import Queue

from broker import SyncPublisher, WorkerHandle

LEVELS = ("info",) * 16 + ("warning",) * 3 + ("error",)  # ~80% info, 15% warning, 5% error


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    name: str
    logs: int
    delay_s: float
    parent: str | None = None


@dataclass(frozen=True, slots=True)
class StepSpec:
    name: str
    workers: tuple[WorkerSpec, ...]


def job_generator(
    logs: float = 1.0, speed: float = 1.0, slow_step: bool = True, fan_out: int = 1000
) -> list[StepSpec]:
    """``logs`` scales every count, ``speed`` divides every delay."""

    def n(count: int) -> int:
        return max(1, round(count * logs))

    def step(name: str, workers: int, count: int, delay_ms: float) -> StepSpec:
        return StepSpec(
            name, tuple(WorkerSpec(f"{name}-w{i}", n(count), delay_ms / 1000 / speed) for i in range(workers))
        )

    steps = [step("fast_generator", 5, 50, 10), step("high_volume_generator", 3, 1200, 5)]
    if slow_step:
        steps.append(step("slow_generator", 2, 300, 500))
    steps.append(StepSpec("recursive_generator", tuple(_recursive(n(20), 0.01 / speed))))
    if fan_out:
        steps.append(step("fan_out_301", 301, fan_out, 0))
    return steps


def _recursive(count: int, delay_s: float) -> Iterator[WorkerSpec]:
    """3 workers, each with 2 children to depth 2, every child logging half its parent's count."""

    def tree(name: str, logs: int, parent: str | None, depth: int) -> Iterator[WorkerSpec]:
        yield WorkerSpec(name, logs, delay_s, parent)
        if depth < 2:
            for c in range(2):
                yield from tree(f"{name}.{c}", max(1, logs // 2), name, depth + 1)

    for i in range(3):
        yield from tree(f"recursive-w{i}", count, None, 0)


def expected_entries(steps: list[StepSpec]) -> int:
    """Per worker: its logs plus start, summary, completed lines and two status lines."""
    return sum(w.logs + 5 for s in steps for w in s.workers)


def run_worker(worker: WorkerHandle[None], spec: WorkerSpec, rng: random.Random) -> None:
    worker.status("running")
    worker.info(f"starting: {spec.logs} items" + (f" (child of {spec.parent})" if spec.parent else ""))
    for i in range(spec.logs):
        worker.log(rng.choice(LEVELS), f"processed item {i} of {spec.logs}", item=i)
        if spec.delay_s:
            time.sleep(spec.delay_s)
    worker.info(f"summary: {spec.logs} items processed", items=spec.logs)
    worker.info("completed")
    worker.status("completed")


Outcome = tuple[int, int, int, int]  # stored, pending, dropped, rejected


def _process(
    url: str, job: str, name: str, step: str, specs: list[WorkerSpec], results: Queue[Outcome]
) -> None:
    with SyncPublisher(url) as pub:
        handle = pub.job(job, name=name, type="manager").step(step)
        rng = random.Random(hash((job, step, len(specs))))
        threads = [
            threading.Thread(target=run_worker, args=(handle.worker(s.name, parent=s.parent), s, rng))
            for s in specs
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        report = pub.flush(120)
    results.put((report.delivered + report.duplicates, report.pending, report.dropped, report.rejected))


def run_step(url: str, job: str, name: str, step: StepSpec, processes: int) -> tuple[int, int]:
    """Run one step's workers in ``processes`` processes; returns (stored, not stored)."""
    ctx = multiprocessing.get_context("spawn")
    results: Queue[Outcome] = ctx.Queue()
    shares = [list(step.workers[i::processes]) for i in range(processes)]
    procs = [
        ctx.Process(target=_process, args=(url, job, name, step.name, share, results))
        for share in shares
        if share
    ]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=3600) for _ in procs]
    for p in procs:
        p.join()
    return sum(o[0] for o in outcomes), sum(o[1] + o[2] + o[3] for o in outcomes)
