"""A real Redis Cluster for tests: N masters (+ replicas) as redis-server processes on free ports,
joined with ``redis-cli --cluster create``; stopped by the fixture that made it. ``binary``: the
server of the matrix (tests/support/servers.py) the nodes run."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import redis

from gateway.cli.redis_server import RedisServer, free_port
from tests.support.servers import find_redis_cli


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is valid and free too."""
    while True:
        port = free_port()
        if port <= 55535:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + 10000))
                    return port
                except OSError:
                    continue


class RedisClusterProcesses:
    def __init__(
        self,
        root: Path,
        masters: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = 2000,
        binary: str | None = None,
    ) -> None:
        self.servers = [
            RedisServer(
                root / f"node{i}",
                port=_cluster_port(),
                appendonly=True,
                binary=binary,
                extra_args=("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                            "--cluster-node-timeout", str(node_timeout_ms)),
            )
            for i in range(masters * (1 + replicas))
        ]  # fmt: skip
        self.replicas = replicas

    @property
    def url(self) -> str:
        return self.servers[0].url

    @property
    def ports(self) -> list[int]:
        return [s.port for s in self.servers]

    def start(self, timeout_s: float = 30.0) -> RedisClusterProcesses:
        try:
            return self._start(timeout_s)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout_s: float) -> RedisClusterProcesses:
        for s in self.servers:
            s.start()
        cli = find_redis_cli()
        nodes = [f"127.0.0.1:{p}" for p in self.ports]
        subprocess.run(
            [cli, "--cluster", "create", *nodes, "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while not all(self._ok(p) for p in self.ports):
            assert time.monotonic() < deadline, "cluster did not reach cluster_state:ok"
            time.sleep(0.1)
        return self

    @staticmethod
    def _ok(port: int) -> bool:
        with redis.Redis(port=port) as r:
            return bool(r.cluster("info")["cluster_state"] == "ok")

    def masters(self) -> list[int]:
        """Asked of each node itself (ROLE): right after creation, gossip may not have told every
        node yet which others are replicas."""
        masters = []
        for port in self.ports:
            with redis.Redis(port=port) as r:
                if r.execute_command("ROLE")[0] == b"master":
                    masters.append(port)
        return sorted(masters)

    def stop(self) -> None:
        for s in self.servers:
            s.stop()
