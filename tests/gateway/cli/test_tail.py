"""``logbroker tail`` as a user runs it: across a gateway restart, across two runs, exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from broker import SyncPublisher
from gateway.cli.redis_server import RedisServer, free_port
from tests.support.gateway_process import GatewayProcess
from tests.support.helpers import read_job
from tests.support.jobs import Line, publish_job

CLI = [sys.executable, "-c", "import sys; from gateway.cli import main; sys.exit(main())"]


def tail(gw: GatewayProcess, *args: str) -> subprocess.Popen[str]:
    cmd = [*CLI, "tail", "--url", gw.url, *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def publish_slowly(url: str, job: str, n: int, status: str = "completed", pace_s: float = 0.002) -> None:
    lines = (Line(f"line {i}", "s", "w") for i in range(n))
    publish_job(url, job, lines, name="Tail", end=status, pace_s=pace_s)


@pytest.mark.slow
def test_tail_resumes_across_a_gateway_restart_without_duplicates(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    gw = GatewayProcess(redis_server.url, tmp_path / "gw.log").start()
    try:
        proc = tail(gw, "t1", "--json")
        publisher = threading.Thread(target=publish_slowly, args=(redis_server.url, "t1", 1500))
        publisher.start()
        time.sleep(1.0)
        gw.kill()
        time.sleep(0.5)
        gw.start()
        publisher.join()
        out, err = proc.communicate(timeout=60)
    finally:
        gw.stop()
    assert proc.returncode == 0, err
    assert "resuming" in err
    printed = [json.loads(line)["id"] for line in out.splitlines()]
    stored = [e["id"] for e in read_job(redis.Redis.from_url(redis_server.url), "t1")]
    assert printed == stored


def test_cursor_file_resumes_across_two_runs(redis_server: RedisServer, tmp_path: Path) -> None:
    gw = GatewayProcess(redis_server.url, tmp_path / "gw.log").start()
    cursor = tmp_path / "cursor"
    try:
        with SyncPublisher(redis_server.url) as pub:
            for i in range(200):
                pub.job("t2").step("s").info(f"first {i}")
        first = tail(gw, "t2", "--json", "--cursor-file", str(cursor))
        deadline = time.monotonic() + 20
        while (not cursor.exists() or cursor.read_text() == "") and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        first.send_signal(signal.SIGINT)
        out1, _ = first.communicate(timeout=20)
        publish_slowly(redis_server.url, "t2", 100, pace_s=0)
        second = tail(gw, "t2", "--json", "--cursor-file", str(cursor))
        out2, err2 = second.communicate(timeout=30)
    finally:
        gw.stop()
    assert second.returncode == 0, err2
    ids1 = [json.loads(line)["id"] for line in out1.splitlines()]
    ids2 = [json.loads(line)["id"] for line in out2.splitlines()]
    stored = [e["id"] for e in read_job(redis.Redis.from_url(redis_server.url), "t2")]
    assert len(ids1) == 200 and ids1 + ids2 == stored


def test_exit_status_follows_the_job_and_usage_errors(redis_server: RedisServer, tmp_path: Path) -> None:
    publish_slowly(redis_server.url, "ok-job", 3, "completed", pace_s=0)
    publish_slowly(redis_server.url, "bad-job", 3, "failed", pace_s=0)
    gw = GatewayProcess(redis_server.url, tmp_path / "gw.log").start()
    try:
        ok = tail(gw, "ok-job", "--color", "never")
        failed = tail(gw, "bad-job", "--level", "info")
        usage = tail(gw, "bad job id")
        bad_level = tail(gw, "ok-job", "--level", "loud")
        results = [p.communicate(timeout=30) for p in (ok, failed, usage, bad_level)]
    finally:
        gw.stop()
    assert [p.returncode for p in (ok, failed, usage, bad_level)] == [0, 1, 2, 2]
    lines = results[0][0].splitlines()
    assert len(lines) == 4 and "INFO" in lines[0] and "s/w #1 line 0" in lines[0]
    assert "invalid_job" in results[2][1] and "invalid_level" in results[3][1]


def test_tail_and_demo_work_when_the_gateway_requires_a_token(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    from gateway.api.auth import mint_token

    secret = "s" * 40
    publish_slowly(redis_server.url, "secret-job", 5, pace_s=0)
    gw = GatewayProcess(redis_server.url, tmp_path / "gw.log", auth_secret=secret).start()
    try:
        token = mint_token(secret, jobs="secret-*", scopes=["read"], ttl_s=60)
        allowed = tail(gw, "secret-job", "--json", "--token", token)
        refused = tail(gw, "secret-job", "--json")
        out, err = allowed.communicate(timeout=30)
        _, refused_err = refused.communicate(timeout=30)
    finally:
        gw.stop()
    assert allowed.returncode == 0, err
    assert len(out.splitlines()) == 6
    assert refused.returncode == 2 and "401" in refused_err
    env = {**os.environ, "LOGBROKER_AUTH_SECRET": secret}
    code = "import sys; from gateway.cli import main; sys.exit(main())"
    demo = subprocess.run(
        [sys.executable, "-c", code, "demo", "--port", str(free_port()), "--data-dir", str(tmp_path / "d"),
         "--no-slow-step", "--speed", "20", "--logs", "0.1", "--fan-out", "5"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert demo.returncode == 0 and "  lost = 0" in demo.stdout.splitlines(), demo.stdout + demo.stderr


def test_tail_into_a_closed_pipe_exits_quietly(redis_server: RedisServer, tmp_path: Path) -> None:
    """``logbroker tail JOB | head`` never exited: the closed stdout was taken for a lost
    connection, and 277 "connection lost (BrokenPipeError), resuming" lines followed."""
    publish_slowly(redis_server.url, "piped", 5000, pace_s=0)
    gw = GatewayProcess(redis_server.url, tmp_path / "gw.log").start()
    try:
        proc = tail(gw, "piped", "--color", "never")
        assert proc.stdout is not None
        first = [proc.stdout.readline() for _ in range(2)]
        proc.stdout.close()  # what head does after its lines
        try:
            proc.wait(timeout=15)
        finally:
            proc.kill()
        assert proc.stderr is not None
        err = proc.stderr.read()
        proc.stderr.close()
    finally:
        gw.stop()
    assert all("line" in line for line in first)
    assert proc.returncode == 141, err
    assert "connection lost" not in err and "Traceback" not in err, err


def test_tail_says_what_it_waits_for_and_what_matched_nothing(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """An unknown job was waited for silently; ``--step nope`` on an ended job exited 0 with no word."""
    publish_slowly(redis_server.url, "done", 3, pace_s=0)
    gw = GatewayProcess(redis_server.url, tmp_path / "gw.log").start()
    try:
        nothing = tail(gw, "done", "--step", "nope")
        waiting = tail(gw, "later")
        assert waiting.stderr is not None
        said = waiting.stderr.readline()
        publish_slowly(redis_server.url, "later", 2, pace_s=0)
        out, _ = waiting.communicate(timeout=30)
        nothing_out, nothing_err = nothing.communicate(timeout=30)
    finally:
        gw.stop()
    assert "job later does not exist yet; waiting" in said
    assert waiting.returncode == 0 and len(out.splitlines()) == 3
    assert nothing.returncode == 3, nothing_err
    assert "no entry of job done matched" in nothing_err
    assert [line.split()[-3:] for line in nothing_out.splitlines()] == [["(job:", "done", '"Tail")']], (
        "the end only"
    )


def test_tail_gives_up_on_a_gateway_it_cannot_reach(tmp_path: Path) -> None:
    """An unreachable gateway or a URL without a scheme was retried for ever."""
    no_scheme = subprocess.run(
        [*CLI, "tail", "--url", "127.0.0.1:8080", "j"], capture_output=True, text=True, timeout=30
    )
    started = time.monotonic()
    unreachable = subprocess.run(
        [*CLI, "tail", "--url", f"http://127.0.0.1:{free_port()}", "--retry-for", "1", "j"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert no_scheme.returncode == 2 and "must start with http://" in no_scheme.stderr
    assert unreachable.returncode == 4, unreachable.stderr
    assert "cannot reach" in unreachable.stderr and time.monotonic() - started < 15


@pytest.mark.slow
def test_retry_for_bounds_the_failures_not_how_long_the_stream_ran(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A tail that had followed for longer than ``--retry-for`` gave up at the first clean end of
    its stream (a gateway shutting down), with "cannot reach", instead of resuming."""
    gw = GatewayProcess(redis_server.url, tmp_path / "gw.log", retry_ms=100).start()
    try:
        proc = tail(gw, "long", "--json", "--retry-for", "8")
        publisher = threading.Thread(
            target=publish_slowly, args=(redis_server.url, "long", 1000, "completed", 0.01)
        )
        publisher.start()
        time.sleep(10.0)  # longer than --retry-for, all of it streaming
        assert publisher.is_alive(), "the restart must come mid-job"
        gw.stop()  # SIGTERM: the gateway ends its streams cleanly
        gw.start()
        publisher.join()
        out, err = proc.communicate(timeout=60)
    finally:
        gw.stop()
    assert proc.returncode == 0, err
    printed = [json.loads(line)["id"] for line in out.splitlines()]
    assert printed == [e["id"] for e in read_job(redis.Redis.from_url(redis_server.url), "long")]
