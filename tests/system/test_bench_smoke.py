"""The benchmarks must keep running: tiny ``--smoke`` runs, their JSON contracts and their checks.

Each runs as a subprocess exactly as a person would run it, so a broken import, a lost entry or a
changed output shape is caught here rather than the next time someone wants numbers.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from typing import Any

import pytest

from tests.support.paths import ROOT

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


LATENCY_C_SCRIPT = ROOT / "benchmarks" / "latency_c.py"


@pytest.mark.slow
@pytest.mark.timeout(150)
@pytest.mark.skipif(
    shutil.which("gcc") is None and shutil.which("cc") is None, reason="no C compiler on PATH"
)
def test_latency_c_smoke_run_is_exact_and_splits_the_latency() -> None:
    """fanout.py part 2 with the C clients: every connection counted every event once, and every
    timed connection timed every entry, publish -> stored never after publish -> received."""
    proc = subprocess.run(
        [sys.executable, str(LATENCY_C_SCRIPT), "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout)
    assert result["exact"] is True and result["goals"]["of"] == 1
    [run] = result["runs"]
    assert run["client_kind"] == "c"
    assert run["measured_events"] == run["entries"] * run["parsing_clients"] > 0
    assert -1 <= run["stored_p50_ms"] <= run["p50_ms"] + 1 and run["stored_p99_ms"] <= run["p99_ms"] + 1
    assert run["p50_ms"] <= run["p99_ms"] <= run["max_ms"]
    assert run["clients_cpu_s"] > 0 and run["gateway_cpu_s"] > 0


FANOUT_SCRIPT = ROOT / "benchmarks" / "fanout.py"
FANOUT_KEYS = ("date", "machine", "settings", "throughput", "latency", "slow_clients", "goals", "exact")
FANOUT_GOALS = ("deliveries_per_s>=1000000", "p99_ms<=50", "kib_per_slow_client<=64")


@pytest.fixture(scope="module")
def fanout_result() -> dict[str, Any]:
    """One ``--smoke`` run of the fan-out benchmark (its own redis-server and gateway processes)."""
    proc = subprocess.run(
        [sys.executable, str(FANOUT_SCRIPT), "--smoke", "--latency-clients", "python"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    parsed: dict[str, Any] = json.loads(proc.stdout)
    return parsed


@pytest.mark.slow
@pytest.mark.timeout(200)  # the fixture's run may take up to 180 s
def test_fanout_smoke_run_has_the_documented_shape(fanout_result: dict[str, Any]) -> None:
    """The keys benchmarks/README.md documents, in every part of the result."""
    assert set(FANOUT_KEYS) <= fanout_result.keys()
    assert {"nproc", "cpu_model", "python", "redis_version"} <= fanout_result["machine"].keys()
    assert set(FANOUT_GOALS) <= fanout_result["goals"].keys()
    assert all(isinstance(v, bool) for v in fanout_result["goals"].values())
    assert {"p50_ms", "p99_ms", "max_ms", "stored_p50_ms", "stored_p99_ms"} <= fanout_result["latency"].keys()
    slow = fanout_result["slow_clients"]
    rss = ("before_clients", "with_idle_clients", "with_stalled_clients")
    assert {f"rss_{name}_kib" for name in rss} <= slow.keys()
    assert {"growth_per_slow_client_kib", "growth_per_slow_client_vs_idle_kib"} <= slow.keys()


@pytest.mark.slow
@pytest.mark.timeout(200)  # the fixture's run may take up to 180 s
def test_fanout_smoke_run_was_exact_and_measured_something(fanout_result: dict[str, Any]) -> None:
    """Every client got every event once, and the slow clients really were stalled when measured."""
    rate, latency, slow = (fanout_result[k] for k in ("throughput", "latency", "slow_clients"))
    assert fanout_result["exact"] is True
    assert rate["exact"] is True and latency["exact"] is True and slow["exact"] is True
    assert rate["min_events"] == rate["max_events"] == rate["events_per_client"]
    assert rate["deliveries_per_s"] > 0 and rate["gateway_cpu_s"] >= 0
    assert latency["achieved_rate_eps"] > 0 and latency["client_kind"] == "python"
    assert latency["measured_events"] == latency["parsing_clients"] * latency["entries"]
    assert 0 <= latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"]
    assert slow["slow_clients_stalled"] is True, "slow clients must still be connected when memory is read"
    assert slow["rss_with_stalled_clients_kib"] > 0


def test_fanout_refuses_an_unknown_client_kind() -> None:
    proc = subprocess.run(
        [sys.executable, str(FANOUT_SCRIPT), "--latency-clients", "java"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "--latency-clients: invalid choice: 'java'" in proc.stderr
    assert proc.stdout == ""


WRITE_SCRIPT = ROOT / "benchmarks" / "write_script.py"


@pytest.mark.slow
def test_write_script_smoke_run_measures_both_scripts_against_xadd() -> None:
    """benchmarks/write_script.py --smoke --against HEAD: the documented keys, every figure
    measured (Redis CPU per entry), the script against itself near 1."""
    cmd = [sys.executable, str(WRITE_SCRIPT), "--smoke", "--against", "HEAD"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result: dict[str, Any] = json.loads(proc.stdout)
    assert {"date", "machine", "entries", "rounds", "against", "batch_1000", "batch_1"} <= result.keys()
    for part in (result["batch_1000"], result["batch_1"]):
        assert part["current_us_per_entry"] > 0 and part["xadd_us_per_entry"] > 0
        assert part["current_vs_xadd"] > 1, "the script does more than a bare XADD"
        assert part["against_us_per_entry"] > 0 and part["current_over_against"] > 0


CLUSTER_SCRIPT = ROOT / "benchmarks" / "cluster.py"
CLUSTER_KEYS = ("date", "machine", "sizes", "single", "cluster", "ratios", "exact")


@pytest.mark.slow
@pytest.mark.timeout(130)  # the run itself is bounded at 120 s (it takes ~6-11 s)
def test_cluster_smoke_run_is_exact_on_both_topologies() -> None:
    """benchmarks/cluster.py --smoke: a single server and a 3-master cluster (its own processes), the
    documented keys, every entry stored and every event delivered on both, jobs on every master."""
    cmd = [sys.executable, str(CLUSTER_SCRIPT), "--smoke"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result: dict[str, Any] = json.loads(proc.stdout)
    assert set(CLUSTER_KEYS) <= result.keys()
    assert result["exact"] is True
    single, cluster, sizes = result["single"], result["cluster"], result["sizes"]
    assert (single["masters"], cluster["masters"], cluster["replicas"]) == (1, 3, 0)
    jobs = sizes["publishers"] * sizes["jobs_per_publisher"]
    per_job = sizes["entries"] // sizes["jobs_per_publisher"]
    for topology in (single, cluster):
        publish, delivery = topology["publish"], topology["delivery"]
        assert publish["verified"] is True and delivery["verified"] is True and delivery["exact"] is True
        assert publish["entries_per_s"] > 0 and delivery["deliveries_per_s"] > 0
        assert delivery["deliveries"] == delivery["clients"] * (per_job + 1)
        assert len(publish["redis_cpu_s"]) == topology["masters"]
        assert sum(publish["jobs_per_master"].values()) == jobs
    assert all(n > 0 for n in cluster["publish"]["jobs_per_master"].values()), "jobs on every master"
    assert set(result["ratios"]) == {"publish_cluster_vs_single", "delivery_cluster_vs_single"}


E2E_SCRIPT = ROOT / "benchmarks" / "e2e.py"
E2E_KEYS = ("date", "command", "machine", "sizes", "ours", "baseline", "ours_vs_baseline", "goals", "exact")
E2E_GOALS = (
    "zero_lost_duplicated_out_of_order_every_client",
    "publish_eps_per_process>=150000",
    "gateway_rss<=256MiB",
    "every_metric>=5x_baseline",
)


@pytest.mark.slow
@pytest.mark.timeout(130)  # the run itself is bounded at 120 s (it takes ~10 s)
def test_e2e_smoke_run_is_exact_and_compares_with_the_baseline() -> None:
    """benchmarks/e2e.py --smoke: ours and the naive baseline on the same tiny workload (their own
    redis-servers, gateways, publisher and client processes); every client of ours, slow ones
    included, got every event once and in order, and each metric has an ours/baseline ratio."""
    cmd = [sys.executable, str(E2E_SCRIPT), "--smoke"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result: dict[str, Any] = json.loads(proc.stdout)
    assert set(E2E_KEYS) <= result.keys()
    ours, base, sizes = result["ours"], result["baseline"], result["sizes"]
    assert result["exact"] is True and ours["exact"] is True and ours["completed"] is True
    expected = sizes["workers"] * sizes["entries"] + 1  # the end entry too
    assert ours["redis"]["xlen"] == base["redis"]["xlen"] == expected
    assert len(ours["clients"]) == sizes["clients"]
    assert sum(c["slow"] for c in ours["clients"]) == sizes["slow_clients"] >= 1
    for row in ours["clients"]:
        counts = (row["received"], row["unique"], row["duplicates"], row["out_of_order"])
        assert counts == (expected, expected, 0, 0) and row["exact"] is True, row
    assert ours["publish"]["eps"] > 0 and ours["delivery"]["fast_done_s"] > 0
    assert 0 < ours["latency_fast_clients"]["p50_ms"] <= ours["latency_fast_clients"]["p99_ms"]
    assert ours["gateway"]["rss_peak_kib"] > 0 and ours["redis"]["used_memory"] > 0
    assert base["completed"] is True, "the tiny baseline run fits its time box"
    for name, ratio in result["ours_vs_baseline"].items():
        assert ratio["factor"] is not None and ratio["factor"] > 0, name
    goals = result["goals"]
    assert set(E2E_GOALS) <= goals.keys()
    assert all(isinstance(goals[g], bool) for g in E2E_GOALS)


OTLP_SCRIPT = ROOT / "benchmarks" / "otlp_ingest.py"
OTLP_PARTS = ("otlp_protobuf", "json_ingest", "python_publisher")
OTLP_KEYS = ("date", "machine", "sizes", *OTLP_PARTS, "ratios", "goals")


@pytest.mark.slow
def test_otlp_ingest_smoke_run_stores_every_entry_of_every_part() -> None:
    """OTLP protobuf, our JSON ingest and the Python publisher in one run, each part verified by
    the streams' lengths, with the goal reported (not asserted: a smoke run is too small to time)."""
    proc = subprocess.run(
        [sys.executable, str(OTLP_SCRIPT), "--smoke"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout)
    assert set(OTLP_KEYS) <= result.keys() and result["verified"] is True
    assert result["sizes"]["batch"] == 512
    for part in OTLP_PARTS:
        assert result[part]["verified"] is True and result[part]["entries_per_s"] > 0, part
    assert result["otlp_protobuf"]["gateway_cpu_s"] > 0
    assert list(result["goals"]) == ["otlp_eps>=50000"]


MASK_SCRIPT = ROOT / "benchmarks" / "mask.py"
MASK_VARIANTS = ("mask5", "mask5_hits")


@pytest.mark.slow
@pytest.mark.timeout(130)
def test_mask_smoke_run_measures_each_variant_and_counts_exactly() -> None:
    """benchmarks/mask.py --smoke: the publisher without masking and with 5 values, A/B in one run
    (every entry stored, the meta's masked count exact: ``verified``), the producer's CPU per line,
    and ingest's prepare with masking off, the built-ins and 5 operator patterns more."""
    proc = subprocess.run(
        [sys.executable, str(MASK_SCRIPT), "--smoke"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result: dict[str, Any] = json.loads(proc.stdout)
    assert result["verified"] is True and result["mask_values"] == 5
    assert set(result["publish_cost"]) == set(result["offer_line_cost"]) == set(MASK_VARIANTS)
    for table in ("publish_eps", "offer_line_cpu_us"):
        assert set(result[table]) == {"none", *MASK_VARIANTS}
        assert all(v > 0 for v in result[table].values()), table
    assert set(result["ingest_prepare_eps"]) == {"none", "builtin", "builtin_plus5"}
    assert all(v > 0 for v in result["ingest_prepare_eps"].values())
    assert isinstance(result["goals"]["mask5_cost<=15%"], bool)
