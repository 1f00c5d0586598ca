"""The types of the shared fixtures in tests/conftest.py, for the tests' annotations."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.cli.redis_server import RedisServer

Client = TestClient[Any, Any]
AiohttpClient = Callable[[web.Application], Awaitable[Client]]
MakeGateway = Callable[..., Awaitable[Client]]
ServerFactory = Callable[..., RedisServer]
