"""``logbroker serve``: one gateway in a process of its own, and the choice of its Redis.

With no Redis configured (neither ``LOGBROKER_REDIS_URL`` nor Sentinels) ``serve`` and ``demo``
start an embedded real redis-server, AOF in the data folder, and stop it on exit: that choice is
made here only (``redis_for``).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import resource
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

from aiohttp import web

from ..api import create_app
from ..api.auth import RedactingAccessLogger
from ..settings import GatewaySettings
from .protocol import GatewayRunner
from .redis_server import RedisServer

log = logging.getLogger(__name__)
SHUTDOWN_TIMEOUT_S = 5
KEEPALIVE_TIMEOUT_S = 75  # an idle kept-alive connection (aiohttp's run_app default; nginx's is 60 s)


@contextmanager
def redis_for(settings: GatewaySettings) -> Iterator[str | None]:
    """The Redis URL to use (``None``: the Sentinels of the settings); an embedded redis-server
    when none is configured, running until the block ends."""
    if not settings.uses_embedded_redis:
        yield settings.redis_url
        return
    embedded = RedisServer(settings.data_dir / "redis", appendonly=True).start()
    log.info("embedded redis-server %s on %s (data in %s)", embedded.binary, embedded.url, embedded.data_dir)
    try:
        yield embedded.url
    finally:
        embedded.stop()


def serve(settings: GatewaySettings) -> None:
    open_files_for(settings)
    with redis_for(settings) as url:
        app = serving_app(settings, url)
        where = url or f"Sentinel master {settings.sentinel_master}"
        print(f"logbroker gateway on http://{settings.host}:{settings.port}/ (Redis {where})", flush=True)
        with asyncio.Runner(loop_factory=partial(new_event_loop, settings.event_loop)) as runner:
            runner.run(serve_until_signalled(app, settings))


async def serve_until_signalled(app: web.Application, settings: GatewaySettings) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully (streams end, handlers finish).
    The loop's close removes the signal handlers."""
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    runner = gateway_runner(app, settings)
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.host, settings.port).start()
        await stop.wait()
    finally:
        await runner.cleanup()


def gateway_runner(app: web.Application, settings: GatewaySettings) -> GatewayRunner:
    """How ``serve`` and ``demo`` run the app: aiohttp's runner with the connection protocol of
    ``gateway.cli.protocol`` (a deadline for request headers, JSON answers to unparsable ones)."""
    return GatewayRunner(
        app, header_timeout_s=settings.header_timeout_s, shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        keepalive_timeout=KEEPALIVE_TIMEOUT_S,
        access_log_class=RedactingAccessLogger,  # a ?token= never reaches the log
        # a client that hangs up ends its handler at once: its stream's slot is free at once,
        # not at its next write (a reconnect loop otherwise filled max_clients)
        handler_cancellation=True,
        auto_decompress=False,  # ingest inflates bodies itself, within the body limit (api/body.py)
    )  # fmt: skip


FILES_BESIDE_CLIENTS = 256  # listening socket, readers and their control connections, logs, slack


def files_needed(settings: GatewaySettings) -> int:
    """Descriptors a gateway at its limits holds: every client, both Redis pools, the readers."""
    return (
        settings.max_clients
        + 2 * settings.redis_max_connections
        + 2 * settings.partitions
        + FILES_BESIDE_CLIENTS
    )


def open_files_for(settings: GatewaySettings) -> None:
    """Raise the process's open-file limit to what ``max_clients`` needs, up to the hard limit: at
    the usual soft limit of 1,024, a thousand slow connections made /healthz and ingest fail."""
    needed = files_needed(settings)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        log.warning(
            "open-file limit %d (hard) is below the %d that LOGBROKER_MAX_CLIENTS=%d needs: raise the "
            "hard limit (ulimit -Hn) or lower LOGBROKER_MAX_CLIENTS to about %d",
            hard, needed, settings.max_clients, max(1, target - (needed - settings.max_clients)),
        )  # fmt: skip


def serving_app(settings: GatewaySettings, url: str | None) -> web.Application:
    """The application as ``serve`` runs it in a process of its own."""
    app = create_app(settings, redis_url=url)
    app.on_startup.append(freeze_startup_heap)
    return app


async def freeze_startup_heap(app: web.Application) -> None:
    """Move everything alive once the gateway has started (modules, classes, settings, pools:
    ~65,000 objects) out of the collector's reach. A full collection of the process otherwise
    walks all of them every few seconds under load, a 45-77 ms pause of every stream at once,
    which was the p99 of fanout.py part 2; after the freeze it walks only what was made since.
    Only ``serve`` does this: it owns the process, an embedding application owns its own heap."""
    gc.collect()
    gc.freeze()


def new_event_loop(kind: str) -> asyncio.AbstractEventLoop:
    """uvloop when asked for, or when installed and ``auto``; asyncio's own loop otherwise."""
    if kind != "asyncio":
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise SystemExit(
                    "logbroker: LOGBROKER_EVENT_LOOP=uvloop but uvloop is not installed"
                ) from None
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()
