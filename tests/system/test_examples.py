"""The README's examples are real files; each must run and store or print the whole job, in order."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import redis

from broker import Entry, Keyspace, decode_entry
from gateway.cli.redis_server import RedisServer
from tests.support.paths import ROOT


def test_publish_and_follow_example_prints_every_line() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "publish_and_follow.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.splitlines()
    assert [line.split()[0] for line in out] == ["1", "2", "3", "4", "5", "1"]
    assert "Status changed: running (job: demo-1" in out[0] and "worker: w-1" in out[0]
    assert out[-1].endswith('Job finished: completed (job: demo-1 "Quick start", type: manager)')


def stored(url: str, job: str) -> list[Entry]:
    client = redis.Redis.from_url(url)
    try:
        return [decode_entry(job, i.decode(), f) for i, f in client.xrange(Keyspace().stream(job))]
    finally:
        client.close()


def run_example(name: str, url: str) -> str:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), url], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return done.stdout


def test_pool_workers_example_stores_every_task_before_the_end(redis_server: RedisServer) -> None:
    """The README's rule for multiprocessing.Pool: flush in the task, close() + join() the pool."""
    assert run_example("pool_workers.py", redis_server.url) == "8 tasks, end stored: True\n"
    entries = stored(redis_server.url, "batch-7")
    assert sorted((e["worker"], e["fields"]) for e in entries[:-1]) == sorted(
        (f"item-{i}", {"item": i}) for i in range(8)
    )
    assert len({e["src"] for e in entries[:-1]}) > 1, "published from the pool's processes"
    end = entries[-1]
    assert end["kind"] == "end" and end["fields"]["converted"] == 8
    assert end["fields"]["totals"]["entries"] == 8


def test_logging_example_carries_names_and_fields_through_extra(redis_server: RedisServer) -> None:
    assert run_example("logging_fields.py", redis_server.url) == "stored 5 entries, ok: True\n"
    entries = stored(redis_server.url, "etl-1")
    assert [(e["msg"], e["level"], e["step"], e["worker"], e["fields"]) for e in entries[:-1]] == [
        ("starting", "info", None, None, {"logger": "etl"}),
        ("loaded 120 rows", "info", "load", "w-1", {"rows": 120, "logger": "etl"}),
        ("skipped a row", "warning", "transform", "w-2", {"row": 17, "logger": "etl"}),
        ("upload failed", "error", "export", "w-3", {"attempt": 3, "logger": "etl"}),
    ]
    assert entries[-1]["kind"] == "end" and entries[-1]["status"] == "failed"


@pytest.mark.parametrize("example", ["pool_workers.py", "logging_fields.py"])
def test_the_readme_shows_the_example_as_it_runs(example: str) -> None:
    """The README's snippet after its link to the example is a verbatim part of the file run above."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(.*?)```", readme[readme.index(f"(examples/{example})") :], re.S)
    assert block is not None
    assert block[1] in (ROOT / "examples" / example).read_text()
