"""Fixtures that own their teardown: real redis-server processes on free ports, and in-process
gateways on them. Their types are in tests/support/fixture_types.py.

The server matrix: in a module marked ``server_matrix``, every test that starts a server (through
these fixtures or ``server_kind``) runs once per server of ``--servers``/``LOGBROKER_TEST_SERVERS``
(tests/support/servers.py), its id naming it (``[valkey]``); elsewhere ``server_kind`` is the
server ``logbroker serve`` would embed."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from gateway.api import create_app
from gateway.cli.redis_server import RedisServer
from gateway.settings import GatewaySettings
from tests.support.fixture_types import AiohttpClient, Client, MakeGateway, ServerFactory
from tests.support.servers import (
    SERVER_NAMES,
    SERVERS_ENV,
    ServerKind,
    ServerNotFound,
    default_server,
    selected_servers,
)

MATRIX = pytest.StashKey[list[ServerKind]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--servers",
        default=os.environ.get(SERVERS_ENV, ""),
        help=f"servers of the matrix, comma-separated from {','.join(SERVER_NAMES)} (default: all, "
        f"or ${SERVERS_ENV})",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "server_matrix(first_only=False): Redis-facing tests, run once per server of --servers "
        "(first_only: a long test whose subject is not the server, on the first server only)",
    )
    try:
        config.stash[MATRIX] = selected_servers(config.getoption("servers"))
    except ServerNotFound as e:
        raise pytest.UsageError(f"{e} (or narrow the matrix: --servers / {SERVERS_ENV})") from None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("server_matrix")
    if "server_kind" in metafunc.fixturenames and marker is not None:
        kinds = metafunc.config.stash[MATRIX][: 1 if marker.kwargs.get("first_only") else None]
        # module scope: a module's tests run server by server, and module fixtures may use it
        metafunc.parametrize("server_kind", kinds, ids=[k.name for k in kinds], indirect=True, scope="module")


@pytest.fixture(scope="session")
def server_kind(request: pytest.FixtureRequest) -> ServerKind:
    """The server to start: the matrix's (by parameter), else the one ``logbroker serve`` embeds."""
    param: ServerKind | None = getattr(request, "param", None)
    return param or default_server()


@pytest.fixture
def redis_server_factory(tmp_path: Path, server_kind: ServerKind) -> Iterator[ServerFactory]:
    servers: list[RedisServer] = []

    def make(**options: object) -> RedisServer:
        options.setdefault("binary", server_kind.binary)
        server = RedisServer(tmp_path / f"redis{len(servers)}", **options)  # type: ignore[arg-type]
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def redis_server(redis_server_factory: ServerFactory) -> RedisServer:
    return redis_server_factory(appendonly=False)


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.fixture
def make_gateway(redis_server: RedisServer, aiohttp_client: AiohttpClient) -> MakeGateway:
    """An in-process gateway on ``redis_server``, settings overridden by keyword (``page_entries=7``...)."""

    async def make(**settings: Any) -> Client:
        return await aiohttp_client(
            create_app(GatewaySettings(**{"redis_url": redis_server.url, **settings}))
        )

    return make


@pytest.fixture
async def api(make_gateway: MakeGateway) -> Client:
    """A gateway with the default settings."""
    return await make_gateway()
