"""``create_app(settings)``: the aiohttp application of one gateway process (docs/design.md §5)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Middleware

from broker.delivery import connect_async

from ..live.hub import Hub
from ..metrics import Metrics
from ..otlp_wire import OTLP_LOGS_PATH
from ..redis_clients import Connector
from ..settings import GatewaySettings
from . import cors, ingest, jobs, openapi, ops, otlp, replay
from .auth import auth_middleware
from .error_middleware import error_middleware
from .params import query_middleware
from .state import GATEWAY, Gateway
from .stream import stream_job

STATIC = Path(__file__).parent.parent / "static"
SHUTDOWN_STREAMS_S = 5.0  # how long shutdown waits for open streams to end
# Any path segment is a job candidate, braces included (aiohttp's default pattern excludes them,
# which made such an id a 404 instead of the 400 naming it); ``params.job_of`` validates it.
JOB = "{job:[^/]+}"


def create_app(settings: GatewaySettings, *, redis_url: str | None = None) -> web.Application:
    """``redis_url`` overrides ``settings.redis_url`` (``logbroker serve`` passes its embedded one)."""
    url = redis_url or settings.redis_url
    if url is None and settings.uses_embedded_redis:
        raise ValueError("no Redis URL: set LOGBROKER_REDIS_URL, or use `logbroker serve` (embedded Redis)")
    app = web.Application(middlewares=_middlewares(settings), client_max_size=settings.max_body_bytes)
    cors.install(app, settings.cors_origins)
    app.cleanup_ctx.append(_lifecycle(settings, url or ""))
    app.on_shutdown.append(_close_streams)
    app.router.add_get("/healthz", ops.healthz)
    app.router.add_get("/readyz", ops.readyz)
    app.router.add_get("/metrics", ops.metrics)
    app.router.add_get("/v1/jobs", jobs.list_jobs)
    app.router.add_get(f"/v1/jobs/{JOB}", jobs.get_job)
    app.router.add_get(f"/v1/jobs/{JOB}/logs", replay.get_logs)
    app.router.add_post(f"/v1/jobs/{JOB}/logs", ingest.post_logs)
    app.router.add_post(OTLP_LOGS_PATH, otlp.post_otlp_logs)
    # no HEAD: a stream's headers promise a body that never ends (a proxy's keepalive connection
    # would stay busy with it); HEAD gets 405 like any other method the route does not serve
    app.router.add_get(f"/v1/jobs/{JOB}/stream", stream_job, allow_head=False)
    app.router.add_get("/", ops.viewer)
    app.router.add_get("/openapi.json", openapi.openapi_route(settings))
    app.router.add_static("/static/", STATIC, append_version=False)
    return app


def _middlewares(settings: GatewaySettings) -> list[Middleware]:
    """Errors outermost, so that CORS refusals and 401/403 answers are JSON like any other error;
    the CORS preflight before auth, because a preflight never carries a token; the query check
    last, so it never tells an unauthenticated client more than a 401."""
    chain: list[Middleware] = [error_middleware]
    if settings.cors_origins:
        chain.append(cors.preflight_middleware(settings.cors_origins))
    if settings.auth_secret is not None:
        chain.append(auth_middleware(settings.auth_secret.get_secret_value(), settings.auth_leeway_s))
    chain.append(query_middleware())
    return chain


def _lifecycle(settings: GatewaySettings, url: str) -> Callable[[web.Application], AsyncIterator[None]]:
    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        connector = Connector(settings, url)
        client, writer = connector.shared(), connector.shared(retry_once=False)
        await connect_async(client, f"gateway (Redis {url or f'Sentinel master {settings.sentinel_master}'})")
        metrics = Metrics()
        async with Hub(client, connector, settings, metrics) as hub:
            app[GATEWAY] = Gateway(settings, client, writer, hub, metrics, settings.keyspace)
            yield
        for redis_client in (client, writer):
            await redis_client.aclose()
        await connector.aclose()

    return lifecycle


async def _close_streams(app: web.Application) -> None:
    """End every open SSE stream cleanly, so clients reconnect (to another gateway) at once."""
    await app[GATEWAY].hub.close_streams(SHUTDOWN_STREAMS_S)
