"""``create_app(settings)``: the aiohttp application of one gateway process (DESIGN §5)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import redis
import redis.asyncio
from aiohttp import web
from aiohttp.typedefs import Middleware

from broker.delivery import load_script_async

from . import cors, ingest, jobs, openapi, replay
from .auth import auth_middleware
from .connections import AnyRedis, Connector
from .context import GATEWAY, Gateway
from .errors import error_middleware, error_response
from .fanout import Fanout
from .metrics import CONTENT_TYPE_LATEST, Metrics
from .settings import GatewaySettings
from .stream import stream_job
from .subscriber import watchdog

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
_CONNECT_ATTEMPTS = 5


def create_app(settings: GatewaySettings, *, redis_url: str | None = None) -> web.Application:
    """``redis_url`` overrides ``settings.redis_url`` (``logbroker serve`` passes its embedded one)."""
    url = redis_url or settings.redis_url
    if url is None and not settings.sentinels:
        raise ValueError("no Redis URL: set LOGBROKER_REDIS_URL, or use `logbroker serve` (embedded Redis)")
    url = url or ""
    app = web.Application(middlewares=_middlewares(settings), client_max_size=settings.max_body_bytes)
    cors.install(app, settings.cors_origins)
    app.cleanup_ctx.append(_lifecycle(settings, url))
    app.on_shutdown.append(_close_streams)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/jobs", jobs.list_jobs)
    app.router.add_get("/v1/jobs/{job}", jobs.get_job)
    app.router.add_get("/v1/jobs/{job}/logs", replay.get_logs)
    app.router.add_post("/v1/jobs/{job}/logs", ingest.post_logs)
    app.router.add_get("/v1/jobs/{job}/stream", stream_job)
    app.router.add_get("/", viewer)
    app.router.add_get("/openapi.json", openapi.openapi_route(settings))
    app.router.add_static("/static/", STATIC, append_version=False)
    return app


def _middlewares(settings: GatewaySettings) -> list[Middleware]:
    """Errors outermost, so that CORS refusals and 401/403 answers are JSON like any other error;
    the CORS preflight before auth, because a preflight never carries a token."""
    chain: list[Middleware] = [error_middleware]
    if settings.cors_origins:
        chain.append(cors.preflight_middleware(settings.cors_origins))
    if settings.auth_secret is not None:
        chain.append(auth_middleware(settings.auth_secret.get_secret_value(), settings.auth_leeway_s))
    return chain


def _lifecycle(settings: GatewaySettings, url: str):  # type: ignore[no-untyped-def]
    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        connector = Connector(settings, url)
        client = connector.shared()
        await _connect(client, url or f"Sentinel master {settings.sentinel_master}")
        metrics_ = Metrics()
        fanout = Fanout(client, connector, settings, metrics_)
        app[GATEWAY] = gw = Gateway(settings, client, fanout, metrics_, settings.keyspace)
        reaper = asyncio.get_running_loop().create_task(watchdog(gw), name="logbroker-watchdog")
        yield
        reaper.cancel()
        await asyncio.wait([reaper])
        await fanout.aclose()
        await client.aclose()
        await connector.aclose()

    return lifecycle


async def _connect(client: AnyRedis, url: str) -> None:
    """Connect eagerly and fail loudly: a few bounded retries, one warning each."""
    for attempt in range(1, _CONNECT_ATTEMPTS + 1):
        try:
            await client.ping()
            await load_script_async(client)
            return
        except (redis.RedisError, OSError) as e:
            if attempt == _CONNECT_ATTEMPTS:
                raise
            log.warning("Redis at %s not reachable (%s), attempt %d/%d", url, e, attempt, _CONNECT_ATTEMPTS)
            await asyncio.sleep(0.2 * attempt)


async def _close_streams(app: web.Application) -> None:
    """End every open SSE stream cleanly, so clients reconnect (to another gateway) at once."""
    gw = app[GATEWAY]
    for sub in list(gw.subscribers):
        sub.stop()


async def viewer(request: web.Request) -> web.FileResponse:
    """The web log viewer: static HTML/JS, no build step."""
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    try:
        async with asyncio.timeout(1.0):
            await gw.redis.ping()
    except (TimeoutError, redis.RedisError, OSError) as e:
        return error_response(503, "not_ready", f"Redis not reachable: {type(e).__name__}")
    if not gw.fanout.healthy:
        return error_response(503, "not_ready", "a partition reader cannot read from Redis")
    return web.json_response({"status": "ready", "clients": len(gw.subscribers)})


async def metrics(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    feeds = gw.fanout.feeds.values()
    gw.metrics.ring_entries.set(sum(len(f) for f in feeds))
    gw.metrics.ring_bytes.set(sum(f.nbytes for f in feeds))
    gw.metrics.unsent_bytes.set(sum(sub.unsent() for sub in gw.subscribers))
    return web.Response(body=gw.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})
