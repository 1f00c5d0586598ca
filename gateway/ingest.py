"""Placeholder: being written (see gateway/app.py for the route)."""

from __future__ import annotations

from aiohttp import web

from .errors import ApiError


async def post_logs(request: web.Request) -> web.Response:
    raise ApiError(501, "not_implemented", "ingest is not implemented yet")
