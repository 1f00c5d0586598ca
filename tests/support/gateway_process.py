"""A gateway as a real process (``python -m gateway``), for tests with real HTTP clients."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import BinaryIO

import httpx

from gateway.cli.redis_server import free_port
from tests.support.paths import ROOT


class GatewayProcess:
    def __init__(self, redis_url: str, log_path: Path, port: int | None = None, **settings: object) -> None:
        self.redis_url = redis_url
        self.port = port or free_port()
        self.log_path = log_path
        self.env = {**os.environ, **{f"LOGBROKER_{k.upper()}": str(v) for k, v in settings.items()}}
        self.process: subprocess.Popen[bytes] | None = None
        self._log: BinaryIO | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 20.0) -> GatewayProcess:
        self._log = log = self.log_path.open("ab")
        cmd = [sys.executable, "-m", "gateway", "--port", str(self.port), "--redis-url", self.redis_url]
        self.process = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log_path.read_text()[-3000:]
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"gateway did not become ready: {self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._close_log()

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
        self._close_log()

    def _close_log(self) -> None:
        self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None
