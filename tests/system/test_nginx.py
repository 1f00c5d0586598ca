"""A real nginx (Debian's package) running deploy/nginx.conf in front of two real gateways.

The config is the very template docker-compose.yml mounts, rendered from the compose nginx
service's own environment with only the addresses moved to this machine (test_compose's
render_nginx_conf), so what passes here is what the deployment runs: 50 clients through nginx
survive a gateway's SIGKILL with nothing lost or repeated, the stream is not held in a buffer,
heartbeats pass, and Authorization and the body limit behave.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import httpx
import jwt
import pytest
import redis

from broker import SyncPublisher
from broker.client import LogEntry, Retry, follow
from gateway.api.auth import mint_token
from gateway.cli.redis_server import RedisServer, free_port
from tests.support.compose import render_nginx_conf
from tests.support.gateway_process import GatewayProcess
from tests.support.helpers import read_job
from tests.support.jobs import publish_paced
from tests.support.sse_client import follow_many, parse

NGINX = shutil.which("nginx")
# Debian's nginx creates its temp folders under /var/lib/nginx at start; only root may, unless
# the folder was made writable.
TEMP_WRITABLE = os.geteuid() == 0 or os.access("/var/lib/nginx", os.W_OK)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        NGINX is None, reason="nginx is not on PATH (Debian: apt-get install nginx; .ci/run installs it)"
    ),
    pytest.mark.skipif(not TEMP_WRITABLE, reason="Debian's nginx needs root to create /var/lib/nginx/*"),
]


class NginxProcess:
    """nginx in the foreground with its pid file, error log and access log in a test folder."""

    def __init__(self, folder: Path, gateways: list[GatewayProcess]) -> None:
        self.folder = folder
        self.port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        addresses = {f"gateway{i + 1}:8080": f"127.0.0.1:{g.port}" for i, g in enumerate(gateways)}
        self.conf = folder / "nginx.conf"
        self.conf.write_text(render_nginx_conf(addresses, self.port))
        self.log_path = folder / "nginx.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._log: BinaryIO | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 10.0) -> NginxProcess:
        assert NGINX is not None
        # daemon, pid and user are left out of the template (the nginx image sets them); as root
        # the workers run as root so they can use the test folder, which is private to root.
        directives = f"daemon off; pid {self.folder}/nginx.pid; error_log {self.folder}/error.log info;"
        if os.geteuid() == 0:
            directives += " user root;"
        cmd = [NGINX, "-p", f"{self.folder}/", "-c", str(self.conf), "-g", directives]
        self._log = self.log_path.open("ab")
        # its own session: if the master does not stop, its workers are killed with it by group
        self.process = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"nginx exited: {self.logs()}"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"nginx did not listen on {self.port}: {self.logs()}")

    def logs(self) -> str:
        parts = [self.log_path, self.folder / "error.log"]
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in parts if p.exists())

    def stop(self) -> None:
        """SIGTERM is nginx's fast shutdown: open SSE connections do not hold it up."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None


def _gateways(redis_url: str, folder: Path, **settings: object) -> list[GatewayProcess]:
    return [GatewayProcess(redis_url, folder / f"gw{i}.log", **settings) for i in (1, 2)]


def _start(gateways: list[GatewayProcess], nginx: NginxProcess) -> None:
    for gateway in gateways:
        gateway.start()
    nginx.start()


def _stop(gateways: list[GatewayProcess], nginx: NginxProcess) -> None:
    nginx.stop()
    for gateway in gateways:
        gateway.stop()


def _clients_on(gateway: GatewayProcess) -> int:
    return int(httpx.get(f"{gateway.url}/readyz").json()["clients"])


def _stored_entries(gateway: GatewayProcess, job: str) -> int:
    r = httpx.get(f"{gateway.url}/v1/jobs/{job}")
    return int(r.json()["entries"]) if r.status_code == 200 else 0


def test_50_clients_through_nginx_resume_on_the_other_gateway_after_kill_9(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Round robin puts clients on both gateways; SIGKILL one mid-stream and its clients'
    reconnects (with Last-Event-ID, through nginx) land on the survivor: every client ends with
    exactly the stored stream, in order."""
    job = "ngx-k9"
    first, second = gateways = _gateways(redis_server.url, tmp_path, heartbeat_s=0.5)
    nginx = NginxProcess(tmp_path / "nginx", gateways)
    try:
        _start(gateways, nginx)
        with multiprocessing.get_context("spawn").Pool(10) as pool:
            pending = pool.map_async(follow_many, [(nginx.url, job, 5)] * 10)
            deadline = time.monotonic() + 30
            while _clients_on(first) + _clients_on(second) < 50:
                assert time.monotonic() < deadline, "50 clients did not connect through nginx"
                time.sleep(0.1)
            on_first = _clients_on(first)
            assert 0 < on_first < 50, "nginx spreads the clients over both gateways"
            publisher = threading.Thread(target=publish_paced, args=(redis_server.url, job, 5000, 0.01))
            publisher.start()
            while _stored_entries(second, job) < 1500 and publisher.is_alive():
                time.sleep(0.02)
            assert publisher.is_alive(), "the kill must come mid-stream"
            first.kill()
            publisher.join()
            results = [r for batch in pending.get(timeout=60) for r in batch]
    finally:
        _stop(gateways, nginx)
    stored = [e["id"] for e in read_job(redis.Redis.from_url(redis_server.url), job)]
    assert len(stored) == 5001
    assert len(results) == 50
    for ids, _ in results:
        assert ids == stored, "0 lost, 0 duplicated, in order"
    reconnected = sum(1 for _, connections in results if connections > 1)
    assert reconnected >= on_first, "the killed gateway's clients resumed through nginx"


def _read_until(chunks: Iterator[bytes], buffer: bytearray, marker: bytes, count: int = 1) -> None:
    """Read raw response bytes until ``marker`` was seen ``count`` times; each read is bounded by
    the client's timeout, so bytes held in a proxy buffer fail the test instead of arriving late."""
    while buffer.count(marker) < count:
        buffer.extend(next(chunks))


def test_the_stream_through_nginx_is_unbuffered_uncompressed_and_heartbeats_pass(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Heartbeats of a job that does not exist yet, then its first entry, arrive through nginx
    while the job is still running: nothing waits in a buffer for more bytes or the end."""
    job = "ngx-live"
    gateways = _gateways(redis_server.url, tmp_path, heartbeat_s=0.2)
    nginx = NginxProcess(tmp_path / "nginx", gateways)
    try:
        _start(gateways, nginx)
        with (
            httpx.Client(timeout=httpx.Timeout(3.0)) as http,
            http.stream("GET", f"{nginx.url}/v1/jobs/{job}/stream", headers={"Accept-Encoding": "gzip"}) as r,
        ):
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            assert "content-encoding" not in r.headers, "no gzip on the event stream"
            assert r.headers.get("transfer-encoding") == "chunked"
            chunks, received = r.iter_raw(), bytearray()
            _read_until(chunks, received, b": heartbeat\n\n", count=3)  # they keep coming, one by one
            with SyncPublisher(redis_server.url) as pub:
                pub.job(job).step("s").worker("w").info("first entry")
                assert pub.flush(10).ok
                _read_until(chunks, received, b"data: ")  # the job has not ended: no end entry yet
                assert b"event: end" not in received
                pub.job(job).end("completed")
            _read_until(chunks, received, b"event: end")
            with pytest.raises(StopIteration):
                next(chunks)  # the gateway closes after the end event, and so does nginx
    finally:
        _stop(gateways, nginx)
    events = parse(bytes(received)).events
    assert (events[0].event, events[0].json()["msg"]) == ("message", "first entry")
    assert events[-1].event == "end"


def test_authorization_and_the_body_limit_through_nginx(redis_server: RedisServer, tmp_path: Path) -> None:
    """The token header reaches the gateway (401 without it, the job's 404 with it), ingest
    works, and a body over the gateway's 16 MiB limit is refused by nginx with the API's JSON
    error shape, before it reaches a gateway."""
    secret = "s" * 40
    gateways = _gateways(redis_server.url, tmp_path, auth_secret=secret)
    nginx = NginxProcess(tmp_path / "nginx", gateways)
    read = {"Authorization": f"Bearer {mint_token(secret, jobs='*', scopes=['read'], ttl_s=600)}"}
    publish = {"Authorization": f"Bearer {mint_token(secret, jobs='*', scopes=['publish'], ttl_s=600)}"}
    try:
        _start(gateways, nginx)
        with httpx.Client(base_url=nginx.url, timeout=30) as http:
            assert http.get("/v1/jobs/ngx-auth").status_code == 401
            assert http.get("/v1/jobs/ngx-auth", headers=read).status_code == 404
            ok = http.post("/v1/jobs/ngx-auth/logs", headers=publish, json=[{"msg": "through nginx"}])
            assert ok.status_code == 200 and ok.json()["accepted"] == 1
            assert http.get("/v1/jobs/ngx-auth", headers=read).json()["entries"] == 1
            too_big = b"[" + b" " * (16 * 1024 * 1024) + b"]"
            refused = http.post(
                "/v1/jobs/ngx-auth/logs",
                headers={**publish, "Content-Type": "application/json"},
                content=too_big,
            )
            assert refused.status_code == 413
            assert refused.json()["error"]["code"] == "body_too_large"
            assert refused.headers["content-type"] == "application/json"
            # a JWT with many claims (12 KB) passes nginx in the header and in ?token=; longer
            # ones reach the gateway, which refuses them in its JSON error shape
            claims = {"jobs": "*", "scope": "read", "exp": int(time.time()) + 600}
            big = jwt.encode({**claims, "groups": [f"team-{i:05d}" for i in range(800)]}, secret)
            assert 12_000 < len(big) < 16_000
            bearer = {"Authorization": f"Bearer {big}"}
            assert http.get("/v1/jobs/ngx-auth", headers=bearer).status_code == 200
            assert http.get("/v1/jobs/ngx-auth", params={"token": big}).status_code == 200
            too_long = http.get("/v1/jobs/ngx-auth", headers={"Authorization": f"Bearer {big}{big}"})
            assert too_long.status_code == 431 and too_long.json()["error"]["code"] == "header_too_large"
    finally:
        _stop(gateways, nginx)


async def test_broker_client_follows_through_nginx_onto_the_second_gateway_exactly_once(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """``broker.client.follow`` through nginx: the gateway serving it is SIGKILLed mid-stream;
    nginx answers the reconnect from the other one (or 502 first, which is retried), and the
    client ends with exactly the stored stream, the end entry last."""
    job = "ngx-client"
    gateways = _gateways(redis_server.url, tmp_path, heartbeat_s=0.5, retry_ms=50)
    nginx = NginxProcess(tmp_path / "nginx", gateways)
    got: list[str] = []

    async def consume() -> int:
        async with follow(nginx.url, job, retry=Retry(initial_ms=20, max_ms=200, max_elapsed_s=30)) as es:
            async for e in es:
                assert isinstance(e, LogEntry)
                got.append(e.id)
            return es.connections

    try:
        _start(gateways, nginx)
        publisher = threading.Thread(target=publish_paced, args=(redis_server.url, job, 3000, 0.05))
        publisher.start()
        follower = asyncio.ensure_future(consume())
        while len(got) < 500:
            assert publisher.is_alive() and not follower.done(), "the kill must come mid-stream"
            await asyncio.sleep(0.01)
        counts = [await asyncio.to_thread(_clients_on, g) for g in gateways]
        assert sorted(counts) == [0, 1], "one gateway holds the client's stream"
        gateways[counts.index(1)].kill()
        assert publisher.is_alive(), "the kill came mid-stream"
        connections = await asyncio.wait_for(follower, 60)
        await asyncio.to_thread(publisher.join)
    finally:
        _stop(gateways, nginx)
    stored = [e["id"] for e in read_job(redis.Redis.from_url(redis_server.url), job)]
    assert len(stored) == 3001 and got == stored, "0 lost, 0 duplicated, in order"
    assert connections >= 2
