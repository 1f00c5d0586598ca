"""The app state under one typed ``web.AppKey``: what every handler reads (set up by ``create_app``).

It lives with the API rather than at the package's top level because it holds the live hub:
the engine never sees this state (it takes what it needs as arguments), and the modules that
both share never import the engine.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from broker.keys import Keyspace

from ..live.hub import Hub
from ..metrics import Metrics
from ..redis_clients import AnyRedis
from ..settings import GatewaySettings


@dataclass(frozen=True, eq=False, slots=True)
class Gateway:
    settings: GatewaySettings
    redis: AnyRedis  # reads (a dead pooled connection is retried once)
    writer: AnyRedis  # ingest's writes (never retried by the gateway: see gateway.redis_clients)
    hub: Hub  # every live subscription of this process
    metrics: Metrics
    keyspace: Keyspace


GATEWAY = web.AppKey("gateway", Gateway)
