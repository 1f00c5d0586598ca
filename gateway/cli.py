"""The ``logbroker`` command. ``serve`` runs a gateway; with no Redis URL configured it starts an
embedded real redis-server (AOF in the data folder) and stops it on exit."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from aiohttp import web
from pydantic import ValidationError

from .app import create_app
from .redis_server import RedisServer, RedisServerError
from .settings import GatewaySettings

log = logging.getLogger("gateway.cli")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="logbroker", description="Redis-backed distributed log broker")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run a gateway (embedded Redis when no URL is configured)")
    serve.add_argument("--host", help="listen address (LOGBROKER_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (LOGBROKER_PORT, default 8080)")
    serve.add_argument(
        "--redis-url", help="use this Redis (LOGBROKER_REDIS_URL); unset: embedded redis-server"
    )
    serve.add_argument(
        "--data-dir", help="embedded Redis data folder (LOGBROKER_DATA_DIR, default ./.logbroker)"
    )
    return parser


def settings_from(args: argparse.Namespace) -> GatewaySettings:
    """Environment first, command-line flags over it."""
    overrides = {
        name: value
        for name, value in (
            ("host", args.host),
            ("port", args.port),
            ("redis_url", args.redis_url),
            ("data_dir", args.data_dir),
        )
        if value is not None
    }
    return GatewaySettings(**overrides)


def serve(settings: GatewaySettings) -> None:
    embedded: RedisServer | None = None
    url = settings.redis_url
    if url is None:
        embedded = RedisServer(settings.data_dir / "redis", appendonly=True).start()
        url = embedded.url
        log.info("embedded redis-server %s on %s (data in %s)", embedded.binary, url, embedded.data_dir)
    try:
        app = create_app(settings, redis_url=url)
        print(f"logbroker gateway on http://{settings.host}:{settings.port}/ (Redis {url})", flush=True)
        web.run_app(app, host=settings.host, port=settings.port, print=None, shutdown_timeout=5)
    finally:
        if embedded is not None:
            embedded.stop()


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    try:
        settings = settings_from(args)
    except ValidationError as e:
        print(f"logbroker: invalid setting: {e}", file=sys.stderr)
        return 2
    try:
        if args.command == "serve":
            serve(settings)
    except RedisServerError as e:
        print(f"logbroker: {e}", file=sys.stderr)
        return 1
    return 0
