"""Fixtures that own their teardown: real redis-server processes on free ports."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.api import create_app
from gateway.cli.redis_server import RedisServer
from gateway.settings import GatewaySettings

ServerFactory = Callable[..., RedisServer]
AiohttpClient = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
MakeGateway = Callable[..., Awaitable[TestClient[Any, Any]]]


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
    async def make(**settings: Any) -> TestClient[Any, Any]:
        return await aiohttp_client(create_app(GatewaySettings(redis_url=redis_server.url, **settings)))

    return make
