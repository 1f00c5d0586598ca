"""The gateway's state, under one typed ``web.AppKey``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from broker.keys import Keyspace

from .connections import AnyRedis
from .fanout import Fanout
from .metrics import Metrics
from .settings import GatewaySettings

if TYPE_CHECKING:
    from .subscriber import Subscriber


@dataclass(eq=False)
class Gateway:
    settings: GatewaySettings
    redis: AnyRedis
    fanout: Fanout
    metrics: Metrics
    keyspace: Keyspace
    subscribers: set[Subscriber] = field(default_factory=set)


GATEWAY = web.AppKey("gateway", Gateway)
