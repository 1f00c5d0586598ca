"""The publish benchmark must keep running: a tiny ``--smoke`` run, its JSON contract and its check.

It runs as a subprocess exactly as a person would run it, so a broken import, a lost entry or a
changed output shape is caught here rather than the next time someone wants numbers.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "publish.py"
KEYS = (
    "date",
    "machine",
    "entries_per_process",
    "message_bytes",
    "async_1proc_eps",
    "sync_1proc_eps",
    "two_proc_eps",
    "redis_benchmark_xadd_rps",
    "ratio_1proc_vs_redis_benchmark",
    "ratio_2proc_vs_redis_benchmark",
    "goals",
    "verified",
)
GOALS = ("1proc>=150000", "2proc>=40%_of_redis_benchmark")


@pytest.fixture(scope="module")
def result() -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    parsed: dict[str, object] = json.loads(proc.stdout)
    return parsed


@pytest.mark.slow
def test_smoke_run_has_the_documented_shape(result: dict[str, object]) -> None:
    assert set(KEYS) <= result.keys()
    machine = result["machine"]
    assert isinstance(machine, dict)
    assert {"cpus", "python", "redis_version"} <= machine.keys()
    goals = result["goals"]
    assert isinstance(goals, dict)
    assert set(GOALS) <= goals.keys()
    assert result["message_bytes"] == 200


@pytest.mark.slow
def test_smoke_run_lost_nothing_and_measured_something(result: dict[str, object]) -> None:
    assert result["verified"] is True
    for key in ("async_1proc_eps", "sync_1proc_eps", "two_proc_eps"):
        rate = result[key]
        assert isinstance(rate, int | float) and rate > 0, key


@pytest.mark.slow
def test_reference_is_null_only_without_redis_benchmark(result: dict[str, object]) -> None:
    reference = result["redis_benchmark_xadd_rps"]
    if shutil.which("redis-benchmark") is None:
        assert reference is None
        assert result["ratio_1proc_vs_redis_benchmark"] is None
        return
    assert isinstance(reference, float) and reference > 0
    for key in ("ratio_1proc_vs_redis_benchmark", "ratio_2proc_vs_redis_benchmark"):
        ratio = result[key]
        assert isinstance(ratio, float) and ratio > 0, key
