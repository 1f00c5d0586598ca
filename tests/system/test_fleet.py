"""The worker-fleet workload: 8 processes x 40 threads x 500 entries over 3 steps = 160,000.

One SyncPublisher is created (and used) in the parent before the fork, so this is also the
fork-safety test: each child must get its own src, sockets and sender, and must not resend the
parent's buffer.
"""

from __future__ import annotations

import multiprocessing
import threading

import pytest
import redis

from broker import SyncPublisher
from gateway.cli.redis_server import RedisServer
from tests.support.helpers import assert_exactly_once, assert_lines_contiguous, count_by, read_job, read_meta

pytestmark = pytest.mark.slow
PROCESSES, WORKERS, ENTRIES = 8, 40, 500
STEPS = ("fast_generator", "high_volume_generator", "slow_generator")
JOB = "fleet-1"


def _child(pub: SyncPublisher, proc: int) -> None:
    job = pub.job(JOB, name="Fleet", type="manager")

    def work(w: int) -> None:
        worker = job.step(STEPS[w % len(STEPS)]).worker(f"p{proc}-w{w}")
        for i in range(ENTRIES):
            worker.info(f"p{proc} w{w} item {i}", i=i)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report = pub.close(timeout=120)
    raise SystemExit(0 if report.ok and report.delivered == WORKERS * ENTRIES else 1)


def test_fleet_of_processes_delivers_exactly_once_in_order(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    pub = SyncPublisher(redis_server.url)
    job = pub.job(JOB, name="Fleet", type="manager")
    job.status("running")
    assert pub.flush().ok  # the parent has a live connection and sender thread when it forks
    ctx = multiprocessing.get_context("fork")
    children = [ctx.Process(target=_child, args=(pub, p)) for p in range(PROCESSES)]
    for c in children:
        c.start()
    for c in children:
        c.join(300)
    assert [c.exitcode for c in children] == [0] * PROCESSES
    job.end("completed")
    assert pub.close().ok

    entries = read_job(redis_client, JOB)
    logs = [e for e in entries if e["kind"] == "log"]
    assert len(logs) == PROCESSES * WORKERS * ENTRIES == 160_000
    assert_exactly_once(entries)
    per_step = assert_lines_contiguous(entries)
    by_worker: dict[str, list[int]] = {}
    for e in logs:
        by_worker.setdefault(e["worker"], []).append(e["fields"]["i"])  # type: ignore[arg-type,index]
    assert len(by_worker) == PROCESSES * WORKERS
    assert all(items == list(range(ENTRIES)) for items in by_worker.values()), "a worker's order was broken"

    srcs = {e["src"] for e in logs}
    assert len(srcs) == PROCESSES and pub.src not in srcs, "each child publishes under its own src"
    assert {e["src"] for e in entries if e["kind"] != "log"} == {pub.src}

    meta = read_meta(redis_client, JOB)
    assert meta.entries == len(entries)
    assert {s: m.entries for s, m in meta.steps.items()} == {s: n for s, n in per_step.items() if s}
    assert {(s, w): m.entries for s, sm in meta.steps.items() for w, m in sm.workers.items()} == count_by(
        logs, "step", "worker"
    )
    totals = entries[-1]["fields"]["totals"]  # type: ignore[index]
    assert totals["entries"] == 160_001 and sum(totals["steps"].values()) == 160_000
    assert {s: p["entries"] for s, p in totals["publishers"].items()} == {
        **{s: WORKERS * ENTRIES for s in srcs},
        pub.src: 1,
    }
