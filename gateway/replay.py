"""Placeholder: being written (see gateway/app.py for the route)."""

from __future__ import annotations

from aiohttp import web

from .errors import ApiError


async def get_logs(request: web.Request) -> web.StreamResponse:
    raise ApiError(501, "not_implemented", "replay is not implemented yet")
