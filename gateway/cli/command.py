"""The ``logbroker`` command: its arguments, and which command runs (docs/design.md §8).

``serve`` runs a gateway (``gateway.cli.serve``); ``demo`` adds the job-generator fleet and a
delivery report; ``tail`` follows a job; ``token`` mints a job-scoped token.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import redis
from pydantic import ValidationError

from ..api.auth import mint_token
from ..errors import RedisServerError
from ..settings import GatewaySettings
from .demo import run_demo
from .serve import serve
from .tail import Tail, TailOptions
from .workload import job_generator


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="logbroker", description="Redis-backed distributed log broker")
    sub = parser.add_subparsers(dest="command", required=True)
    serve_cmd = sub.add_parser("serve", help="run a gateway (embedded Redis when no URL is configured)")
    serve_cmd.add_argument("--host", help="listen address (LOGBROKER_HOST, default 127.0.0.1)")
    serve_cmd.add_argument("--port", type=int, help="listen port (LOGBROKER_PORT, default 8080)")
    serve_cmd.add_argument(
        "--redis-url", help="use this Redis (LOGBROKER_REDIS_URL); unset: embedded redis-server"
    )
    serve_cmd.add_argument(
        "--data-dir", help="embedded Redis data folder (LOGBROKER_DATA_DIR, default ./.logbroker)"
    )
    demo = sub.add_parser(
        "demo", help="gateway + embedded Redis + the job-generator fleet, with a delivery report"
    )
    demo.add_argument("--host")
    demo.add_argument("--port", type=int)
    demo.add_argument("--redis-url", help="use this Redis instead of an embedded one")
    demo.add_argument("--data-dir")
    demo.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    demo.add_argument("--logs", type=float, default=1.0, help="scale every step's log count (default 1.0)")
    demo.add_argument("--speed", type=float, default=1.0, help="divide every delay (default 1.0)")
    demo.add_argument(
        "--no-slow-step", action="store_true", help="skip slow_generator (2 x 300 logs, 500 ms apart)"
    )
    demo.add_argument(
        "--fan-out", type=int, default=1000, help="entries per worker of the 301-worker step (0: skip)"
    )
    tail = sub.add_parser("tail", help="follow a job's log; resumes after drops and restarts")
    tail.add_argument("job")
    tail.add_argument("--url", help="gateway base URL (default http://LOGBROKER_HOST:LOGBROKER_PORT)")
    tail.add_argument("--after", help="start after this entry id ($: only entries from now)")
    tail.add_argument("--tail", type=int, metavar="N", help="start with the N newest matching entries")
    tail.add_argument("--step")
    tail.add_argument("--worker")
    tail.add_argument("--level", help="minimum level: debug, info, warning, error, critical")
    tail.add_argument("--json", action="store_true", help="print entries as JSON lines")
    tail.add_argument("--cursor-file", type=Path, help="resume from (and keep) the cursor in this file")
    tail.add_argument("--color", choices=("auto", "always", "never"), default="auto")
    tail.add_argument("--token", help="a read token when the gateway requires auth (or LOGBROKER_TOKEN)")
    tail.add_argument(
        "--retry-for", type=float, default=120.0, metavar="SECONDS",
        help="give up (exit 4) when the gateway cannot be reached for this long (default 120)",
    )  # fmt: skip
    _token_parser(sub)
    return parser


def _token_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    token = sub.add_parser("token", help="print a job-scoped token signed with LOGBROKER_AUTH_SECRET")
    token.add_argument("--jobs", required=True, metavar="PATTERN", help="job-id glob (* and ?): mgr-*, *")
    token.add_argument(
        "--scope", default="read", help="read, publish, metrics; comma-separated (default read)"
    )
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires (default 3600)")
    token.add_argument("--sub", help="whom it is for (the sub claim)")


def run_token(args: argparse.Namespace, settings: GatewaySettings) -> int:
    """Mint a token for an operator; exit 2 without a secret or with a claim the gateway would refuse."""
    if settings.auth_secret is None:
        print("logbroker token: set LOGBROKER_AUTH_SECRET (the gateways' secret) first", file=sys.stderr)
        return 2
    scopes = args.scope.replace(",", " ").split()
    try:
        secret = settings.auth_secret.get_secret_value()
        token = mint_token(secret, jobs=args.jobs, scopes=scopes, ttl_s=args.ttl, sub=args.sub)
    except ValueError as e:
        print(f"logbroker token: {e}", file=sys.stderr)
        return 2
    print(token)
    return 0


def run_tail(args: argparse.Namespace, settings: GatewaySettings) -> int:
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    base_url = (args.url or f"http://{settings.host}:{settings.port}").rstrip("/")
    options = TailOptions(
        base_url=base_url, job=args.job, after=args.after, tail=args.tail, step=args.step, worker=args.worker,
        level=args.level, as_json=args.json, cursor_file=args.cursor_file, color=color,
        token=args.token or os.environ.get("LOGBROKER_TOKEN"), retry_for_s=args.retry_for,
    )  # fmt: skip
    try:
        return asyncio.run(Tail(options).run())
    except KeyboardInterrupt:
        return 130


def settings_from(args: argparse.Namespace) -> GatewaySettings:
    """Environment first, command-line flags over it."""
    names = ("host", "port", "redis_url", "data_dir")
    overrides = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    return GatewaySettings(**overrides)


def run_demo_command(args: argparse.Namespace, settings: GatewaySettings) -> int:
    if args.workers < 1 or args.logs <= 0 or args.speed <= 0 or args.fan_out < 0:
        print(
            "logbroker demo: --workers >= 1, --logs > 0, --speed > 0 and --fan-out >= 0 please",
            file=sys.stderr,
        )
        return 2
    steps = job_generator(
        logs=args.logs, speed=args.speed, slow_step=not args.no_slow_step, fan_out=args.fan_out
    )
    try:
        return asyncio.run(run_demo(settings, steps, args.workers))
    except KeyboardInterrupt:
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    level = logging.INFO if args.command == "serve" else logging.WARNING  # a demo prints its own report
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = settings_from(args)
    except ValidationError as e:
        print(f"logbroker: invalid setting: {e}", file=sys.stderr)
        return 2
    try:
        if args.command == "serve":
            serve(settings)
        elif args.command == "tail":
            return run_tail(args, settings)
        elif args.command == "demo":
            return run_demo_command(args, settings)
        elif args.command == "token":
            return run_token(args, settings)
    except RedisServerError as e:
        print(f"logbroker: {e}", file=sys.stderr)
        return 1
    except (OSError, redis.RedisError) as e:  # port in use, Redis unreachable: one line, no traceback
        print(f"logbroker {args.command}: {_startup_failure(e, settings)}", file=sys.stderr)
        return 1
    return 0


def _startup_failure(e: BaseException, settings: GatewaySettings) -> str:
    if isinstance(e, redis.RedisError):
        where = settings.redis_url or (
            f"Sentinel master {settings.sentinel_master}" if settings.sentinels else ""
        )
        return f"Redis {where} is not reachable: {e}".replace("  ", " ")
    if isinstance(e, OSError) and e.errno == errno.EADDRINUSE:
        return f"cannot listen on {settings.host}:{settings.port}: the address is in use ({e.strerror})"
    return f"{type(e).__name__}: {e}"
