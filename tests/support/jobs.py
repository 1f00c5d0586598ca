"""Fixtures for the JSON API tests: an in-process gateway on the test's real redis-server.

Import into a test module with ``from tests.gateway_fixtures import *  # noqa: F403``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from broker import SyncPublisher
from gateway.api import create_app
from gateway.cli.redis_server import RedisServer
from gateway.settings import GatewaySettings

__all__ = ["Client", "MakeApi", "api", "error_of", "make_api", "publish_job"]

Client = TestClient[Any, Any]
AiohttpClient = Callable[[web.Application], Awaitable[Client]]
MakeApi = Callable[..., Awaitable[Client]]


@pytest.fixture
def make_api(redis_server: RedisServer, aiohttp_client: AiohttpClient) -> MakeApi:
    """A gateway with settings overridden by keyword (``page_entries=7``...)."""

    async def make(**settings: Any) -> Client:
        return await aiohttp_client(create_app(GatewaySettings(redis_url=redis_server.url, **settings)))

    return make


@pytest.fixture
async def api(make_api: MakeApi) -> Client:
    return await make_api()


async def error_of(resp: Any, status: int) -> dict[str, str]:
    """The ``error`` object of a JSON error answer, after checking its status and media type."""
    body = await resp.text()
    assert resp.status == status, body
    assert resp.content_type == "application/json", body
    error: dict[str, str] = (await resp.json())["error"]
    assert set(error) == {"code", "message"} and error["message"]
    return error


def publish_job(
    url: str,
    job: str,
    steps: dict[str, tuple[int, int]],
    *,
    name: str = "API",
    type_: str = "manager",
    end: str | None = "completed",
) -> None:
    """``steps``: step -> (workers, entries per worker). Levels cycle info/info/warning/error/debug;
    each step and worker reports ``running`` then ``completed``; one job-level line first."""
    levels = ("info", "info", "warning", "error", "debug")
    with SyncPublisher(url) as pub:
        handle = pub.job(job, name=name, type=type_)
        handle.info("job started")
        for step_name, (workers, per_worker) in steps.items():
            step = handle.step(step_name)
            step.status("running")
            for w in range(workers):
                worker = step.worker(f"w{w}")
                worker.status("running")
                for i in range(per_worker):
                    worker.log(levels[i % len(levels)], f"{step_name} w{w} {i}", i=i)
                worker.status("completed")
            step.status("completed")
        if end:
            handle.end(end)
