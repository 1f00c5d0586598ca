"""The server matrix (tests/support/servers.py, tests/conftest.py): which servers a run uses, and
that only the Redis-facing modules run once per server, each test id naming it."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.support.paths import ROOT
from tests.support.servers import SERVER_NAMES, ServerNotFound, selected_servers


def test_all_three_by_default_and_a_list_in_its_order_once_each() -> None:
    assert [k.name for k in selected_servers("")] == list(SERVER_NAMES) == ["redis7", "redis6.2", "valkey"]
    assert [k.name for k in selected_servers(" valkey,redis7,valkey ")] == ["valkey", "redis7"]
    versions = {k.name: k.major_minor for k in selected_servers("")}
    assert versions["redis7"][0] == 7 and versions["redis6.2"] == (6, 2) and versions["valkey"][0] >= 9


def test_an_unknown_server_names_the_choices() -> None:
    with pytest.raises(ServerNotFound, match=re.escape("choose from redis7, redis6.2, valkey")):
        selected_servers("redis7,redis5")


def _collect(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_only_marked_modules_run_per_server_with_the_server_in_the_id() -> None:
    failover, auth = "tests/system/test_failover.py", "tests/gateway/api/test_auth.py"
    replay = "tests/gateway/api/test_api_replay.py"
    run = _collect("--servers=valkey,redis6.2", failover, auth, replay)
    assert run.returncode == 0, run.stdout + run.stderr
    ids = [line for line in run.stdout.splitlines() if "::" in line]
    of_failover = [i for i in ids if i.startswith(failover)]
    # two Sentinel failovers on both servers, the Cluster one (first_only) on the first
    assert len(of_failover) == 2 * 2 + 1 and all(i.endswith(("[valkey]", "[redis6.2]")) for i in of_failover)
    cluster = "test_cluster_master_failover_with_replica_acks_while_streaming"
    assert [i for i in of_failover if cluster in i] == [f"{failover}::{cluster}[valkey]"]
    of_auth = [i for i in ids if i.startswith(auth)]
    assert of_auth and not any("valkey" in i or "redis6.2" in i for i in of_auth), "not the whole suite"
    walk = "test_pages_walk_a_100k_entry_job_both_ways_without_gap_or_duplicate"
    assert [i for i in ids if walk in i] == [f"{replay}::{walk}[valkey]"], "first_only: the first server only"


def test_a_server_that_is_not_there_stops_the_run_with_how_to_get_it() -> None:
    run = _collect("--servers=redis5", "tests/test_layout.py")
    assert run.returncode == pytest.ExitCode.USAGE_ERROR
    assert "unknown server 'redis5'" in run.stderr and "LOGBROKER_TEST_SERVERS" in run.stderr
