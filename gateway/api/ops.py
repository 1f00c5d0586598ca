"""Operations routes: liveness, readiness, Prometheus metrics, and the viewer page."""

from __future__ import annotations

import asyncio
from pathlib import Path

import redis
from aiohttp import web

from ..metrics import CONTENT_TYPE_LATEST
from .error_middleware import error_response
from .state import GATEWAY

VIEWER = Path(__file__).parent.parent / "static" / "index.html"
READY_TIMEOUT_S = 1.0


async def viewer(request: web.Request) -> web.FileResponse:
    """The web log viewer: static HTML/JS, no build step."""
    return web.FileResponse(VIEWER, headers={"Cache-Control": "no-cache"})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when Redis answers and every partition reader can read: a probe's own 503, not the
    API's ``redis_unavailable`` (a load balancer takes this gateway out, no client retries)."""
    gw = request.app[GATEWAY]
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            await gw.redis.ping()
    except (TimeoutError, redis.RedisError, OSError) as e:
        return error_response(503, "not_ready", f"Redis not reachable: {type(e).__name__}")
    if not gw.hub.healthy:
        return error_response(503, "not_ready", "a partition reader cannot read from Redis")
    return web.json_response({"status": "ready", "clients": gw.hub.clients})


async def metrics(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    rings = gw.hub.rings.values()
    gw.metrics.ring_entries.set(sum(len(r) for r in rings))
    gw.metrics.ring_bytes.set(sum(r.nbytes for r in rings))
    gw.metrics.unsent_bytes.set(sum(sub.unsent() for sub in gw.hub.subscribers))
    return web.Response(body=gw.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})
