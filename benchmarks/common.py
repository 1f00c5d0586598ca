"""Helpers the benchmark scripts share: progress lines, messages, /proc readings, machine info, py-spy.

The scripts run as ``python benchmarks/<name>.py``, which puts this folder on ``sys.path``, so they
(and the spawned processes they start) import this as ``from common import ...``.
"""

from __future__ import annotations

import os
import platform
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

MESSAGE_BYTES = 200


def log(msg: str) -> None:
    """Progress for the human; stdout is reserved for the one JSON result."""
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def message(i: int, size: int = MESSAGE_BYTES) -> str:
    """A log line of ``size`` characters whose number varies, like a real worker's progress line."""
    return f"processed item {i} ".ljust(size, ".")


def split(total: int, parts: int) -> list[int]:
    """``total`` spread as evenly as possible over ``parts`` (e.g. clients over processes)."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted, non-empty list."""
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


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


def machine_with_aiohttp(redis_version: str | None) -> dict[str, Any]:
    """The machine line of the gateway benchmarks (fanout.py, cluster.py)."""
    import aiohttp  # the gateway's HTTP library (the benchmarks' clients are sse_wire.py's)

    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "redis_version": redis_version,
    }


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
