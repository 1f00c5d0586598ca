"""The gateway's HTTP API (docs/design.md §5): thin handlers over ``gateway.live`` and Redis reads."""

from .app import create_app

__all__ = ["create_app"]
