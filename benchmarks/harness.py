"""What the benchmark scripts share: the gateway as a child process, machine info, CPU and memory
readings, percentiles, progress lines, messages, py-spy, and sizes built from the command line.

The scripts run as ``python benchmarks/<name>.py``, which puts this folder on ``sys.path``, so they
(and the spawned processes they start) import this as ``from harness import ...``. It imports no
other module of this folder, so none of them can import it back.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import platform
import queue
import resource
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, Self, TypeVar

import redis

from gateway.cli.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
MESSAGE_BYTES = 200
_SPAWN = multiprocessing.get_context("spawn")  # fresh interpreters: nothing inherited from the parent


# --- progress, messages, arithmetic ---------------------------------------------------------------


def logger(tag: str) -> Callable[[str], None]:
    """Progress lines ``[tag] ...`` for the human; stdout is reserved for the one JSON result."""

    def say(msg: str) -> None:
        print(f"[{tag}] {msg}", file=sys.stderr, flush=True)

    return say


log = logger("bench")


def message(i: int, size: int = MESSAGE_BYTES) -> str:
    """A log line of ``size`` characters whose number varies, like a real worker's progress line."""
    return f"processed item {i} ".ljust(size, ".")


def split(total: int, parts: int) -> list[int]:
    """``total`` spread as evenly as possible over ``parts`` (e.g. clients over processes)."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted, non-empty sequence (the one definition the
    benchmarks use; callers that may have no samples check for that first)."""
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def latency_percentiles(
    rate: int,
    seconds: float,
    achieved: float,
    latencies_ms: Iterable[Iterable[float]],
    stored_ms: Iterable[Iterable[float]],
) -> dict[str, Any]:
    """``fanout.py`` part 2's rate and percentiles over every timed event of every client (nearest
    rank); ``latency_c.py`` reports through it too, so the two results have the same keys and the
    same arithmetic."""
    latencies = sorted(ms for each in latencies_ms for ms in each)
    stored = sorted(ms for each in stored_ms for ms in each)
    return {
        "rate_eps": rate,
        "achieved_rate_eps": round(achieved),
        "seconds": seconds,
        "entries": int(rate * seconds),
        "measured_events": len(latencies),
        "p50_ms": round(percentile(latencies, 50), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "max_ms": round(latencies[-1], 2),
        # publish -> stored in Redis (stream id ms, so +-1 ms): the publisher's share
        "stored_p50_ms": round(percentile(stored, 50), 2),
        "stored_p99_ms": round(percentile(stored, 99), 2),
    }


# --- sizes ----------------------------------------------------------------------------------------

SizesT = TypeVar("SizesT")


def sizes_from_args(args: argparse.Namespace, default: SizesT, smoke: SizesT) -> SizesT:
    """A benchmark's sizes (a frozen dataclass): ``smoke`` with ``--smoke``, else ``default``, and
    each option given on the command line whose destination is a field name in that field's place."""
    base = smoke if args.smoke else default
    fields = dataclasses.fields(base)  # type: ignore[arg-type]
    given = {f.name: getattr(args, f.name) for f in fields if getattr(args, f.name, None) is not None}
    return dataclasses.replace(base, **given)  # type: ignore[type-var]


# --- /proc readings and the machine ---------------------------------------------------------------


def cpu_self_s() -> float:
    """User + system CPU seconds of this process, from getrusage."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def proc_cpu_s(pid: int) -> float:
    """utime + stime from /proc/<pid>/stat: what a child process cost, whoever shares the cores."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_status_kib(pid: int, key: str) -> int:
    """VmRSS (or VmHWM, the kernel's peak) from /proc/<pid>/status, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/{pid}/status")


def proc_meminfo_kib(key: str) -> int | None:
    """A line of /proc/meminfo (e.g. MemTotal) in KiB; None where it does not exist."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_model() -> str | None:
    """For the README's machine line; None where /proc/cpuinfo does not exist."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def _aiohttp_version() -> str:
    import aiohttp  # the gateway's HTTP library (the benchmarks' clients are sse_wire.py's)

    return aiohttp.__version__


MACHINE_KEYS: dict[str, Callable[[], Any]] = {
    "nproc": lambda: len(os.sched_getaffinity(0)),  # the CPUs this process may run on
    "cpus": os.cpu_count,  # publish.py's key: every CPU of the machine
    "cpu_model": cpu_model,
    "mem_total_kib": lambda: proc_meminfo_kib("MemTotal"),
    "loadavg_at_start": os.getloadavg,
    "python": platform.python_version,
    "aiohttp": _aiohttp_version,
    "redis_py": lambda: redis.__version__,
}
GATEWAY_MACHINE = ("nproc", "cpu_model", "python", "aiohttp")  # fanout.py, latency_c.py, cluster.py


def machine(*keys: str, redis_client: redis.Redis | None = None) -> dict[str, Any]:
    """What the numbers depend on, so a result is never read without its context: the given
    ``MACHINE_KEYS`` in that order (``GATEWAY_MACHINE`` when none are given), then
    ``redis_version`` (``INFO server``) when a client is given."""
    host = {key: MACHINE_KEYS[key]() for key in keys or GATEWAY_MACHINE}
    if redis_client is not None:
        host["redis_version"] = redis_client.info("server").get("redis_version")
    return host


def redis_cpu_s(client: redis.Redis) -> float:
    """redis-server's own CPU counters (``INFO cpu``), so its share of the cores is visible."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


# --- the gateway process --------------------------------------------------------------------------


def stop_process(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM first (a gateway ends its streams), SIGKILL if that takes too long."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class GatewayProc:
    """A gateway as a child process, with the /proc readings the benchmarks need.

    ``python -m gateway --port P --redis-url URL``, or ``script`` in its place (``e2e.py``'s naive
    baseline, which takes the same two options and answers ``/readyz`` the same way). ``settings``
    become ``LOGBROKER_<NAME>`` variables in the child's environment (``write_timeout_s=600``,
    ``redis_cluster="true"``); everything else comes from this process's environment, as usual.
    """

    def __init__(
        self, redis_url: str, log_path: Path, *, script: Path | None = None, **settings: object
    ) -> None:
        self.port = free_port()
        self.log_path = log_path
        target = ["-m", "gateway"] if script is None else [str(script)]
        self.cmd = [sys.executable, *target, "--port", str(self.port), "--redis-url", redis_url]
        self.env = {**os.environ, **{f"LOGBROKER_{k.upper()}": str(v) for k, v in settings.items()}}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout_s: float = 20.0) -> GatewayProc:
        """Start and wait for /readyz; a gateway that dies while starting fails with its log."""
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                self.cmd, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            if self.clients() is not None:
                return self
            time.sleep(0.05)
        raise TimeoutError(f"gateway did not become ready: {self.log_tail()}")

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def check_alive(self) -> None:
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError(f"gateway exited: {self.log_tail()}")

    def clients(self) -> int | None:
        """Open streams as ``GET /readyz`` reports them; None while it does not answer 200."""
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as resp:
                return int(json.loads(resp.read()).get("clients", 0))
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def wait_for_clients(self, n: int, timeout_s: float = 60.0) -> None:
        """Until the gateway itself reports exactly ``n`` SSE clients (so all are subscribed)."""
        deadline = time.monotonic() + timeout_s
        seen = None
        while time.monotonic() < deadline:
            self.check_alive()
            seen = self.clients()
            if seen == n:
                return
            time.sleep(0.1)
        raise TimeoutError(f"gateway reports {seen} clients, expected {n}")

    def counters(self, names: Mapping[str, str]) -> dict[str, float] | None:
        """The gateway's own counters (``GET /metrics``, ours only), Prometheus name -> key in
        ``names``: how it did the work, e.g. pages read. None when it does not answer."""
        try:
            with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as resp:
                text = resp.read().decode()
        except (urllib.error.URLError, OSError):
            return None
        values = {}
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name in names:
                values[names[name]] = float(value)
        return values

    def cpu_s(self) -> float:
        """What the gateway cost, whoever else shares the cores."""
        return proc_cpu_s(self.pid)

    def memory_kib(self, key: str = "VmRSS") -> int:
        return proc_status_kib(self.pid, key)

    def stop(self) -> None:
        stop_process(self.process)


@contextmanager
def running_gateway(
    redis_url: str,
    tmp: Path,
    name: str,
    *,
    script: Path | None = None,
    start_timeout_s: float = 20.0,
    say: Callable[[str], None] = log,
    **settings: object,
) -> Iterator[GatewayProc]:
    """A ``GatewayProc`` (log in ``tmp``/gateway-``name``.log) that is stopped on every way out."""
    gw = GatewayProc(redis_url, tmp / f"gateway-{name}.log", script=script, **settings)
    try:
        gw.start(start_timeout_s)
        say(f"{name}: gateway pid {gw.pid} on {gw.url}")
        yield gw
    finally:
        gw.stop()


def gateway_settings(names: Iterable[str], **overrides: object) -> dict[str, Any]:
    """The settings a gateway ran with: its own parser over the same environment and overrides."""
    from gateway.settings import GatewaySettings  # pydantic: only where a result is summarized

    settings = GatewaySettings(**overrides)  # type: ignore[arg-type]
    return {name: getattr(settings, name) for name in names}


class HasCpu(Protocol):
    """A client process's report (``fanout.ProcReport``, ``latency_c.CReport``)."""

    @property
    def cpu_s(self) -> float: ...


@dataclasses.dataclass(frozen=True, slots=True)
class CpuUse:
    """CPU seconds of everyone sharing the cores while a gateway delivers: the gateway, redis-server,
    this process (which only publishes meanwhile) and, in ``report``, the client processes."""

    gateway_s: float
    redis_s: float
    publisher_s: float

    @staticmethod
    def now(gw: GatewayProc, rc: redis.Redis) -> CpuUse:
        """A snapshot; ``since`` turns two snapshots into the CPU spent in between."""
        return CpuUse(gw.cpu_s(), redis_cpu_s(rc), cpu_self_s())

    def since(self, gw: GatewayProc, rc: redis.Redis) -> CpuUse:
        now = CpuUse.now(gw, rc)
        return CpuUse(
            now.gateway_s - self.gateway_s, now.redis_s - self.redis_s, now.publisher_s - self.publisher_s
        )

    def report(self, reports: Sequence[HasCpu]) -> dict[str, float]:
        """The JSON keys, with the client processes' own CPU time added."""
        return {
            "gateway_cpu_s": round(self.gateway_s, 2),
            "clients_cpu_s": round(sum(r.cpu_s for r in reports), 2),
            "redis_cpu_s": round(self.redis_s, 2),
            "publisher_cpu_s": round(self.publisher_s, 2),
        }


# --- child processes ----------------------------------------------------------------------------


class Children:
    """Spawned processes that each put one result (or an error string) on a shared queue.

    Leaving the block joins them; any still running (an error elsewhere) are killed, so no child
    outlives the benchmark.
    """

    def __init__(self, target: Callable[..., None], args: list[tuple[Any, ...]], timeout_s: float) -> None:
        self.results: multiprocessing.Queue[Any] = _SPAWN.Queue()
        self.timeout_s = timeout_s
        # Process.start() drops its args; a Barrier collected here would vanish before a child loads it
        self.args = args
        self.procs = [_SPAWN.Process(target=target, args=(*a, self.results), daemon=True) for a in args]

    def __enter__(self) -> Self:
        for proc in self.procs:
            proc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            proc.join(timeout=10 if exc[0] is None else 0.1)
            if proc.is_alive():
                proc.kill()
                proc.join()

    def collect(self) -> list[Any]:
        """One result per process; any failure fails the whole benchmark loudly."""
        collected: list[Any] = []
        deadline = time.monotonic() + self.timeout_s + 30
        while len(collected) < len(self.procs):
            try:
                item = self.results.get(timeout=1.0)
            except queue.Empty:
                self._check_alive(deadline)
                continue
            if isinstance(item, str):
                raise RuntimeError(f"child process failed: {item}")
            collected.append(item)
        return collected

    def _check_alive(self, deadline: float) -> None:
        """A child that crashed before it could report (or a hang) fails now, not at the deadline."""
        crashed = [p.exitcode for p in self.procs if p.exitcode not in (None, 0)]
        if crashed:
            raise RuntimeError(f"a child process died without reporting (exit codes {crashed})")
        if time.monotonic() > deadline:
            raise RuntimeError("a child process did not report in time")


# --- profiling ------------------------------------------------------------------------------------


@contextmanager
def py_spy(pid: int, out: str | None, rate: int, say: Callable[[str], None] = log) -> Iterator[None]:
    """Sample the gateway with py-spy while the block runs (flamegraph for .svg, else collapsed stacks)."""
    if out is None:
        yield
        return
    fmt = "flamegraph" if out.endswith(".svg") else "raw"
    binary = Path(sys.executable).with_name("py-spy")
    cmd = [str(binary), "record", "--pid", str(pid), "--rate", str(rate), "--format", fmt, "-o", out]
    spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached before the measured window starts
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()
        say(f"py-spy profile of the gateway written to {out}")
