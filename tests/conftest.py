"""Fixtures that own their teardown: real redis-server processes on free ports, and in-process
gateways on them. Their types are in tests/support/fixture_types.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from gateway.api import create_app
from gateway.cli.redis_server import RedisServer
from gateway.settings import GatewaySettings
from tests.support.fixture_types import AiohttpClient, Client, MakeGateway, ServerFactory


@pytest.fixture
def redis_server_factory(tmp_path: Path) -> Iterator[ServerFactory]:
    servers: list[RedisServer] = []

    def make(**options: object) -> RedisServer:
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
