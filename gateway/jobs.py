"""Placeholder: being written (see gateway/app.py for the route)."""

from __future__ import annotations

from aiohttp import web

from .errors import ApiError


async def list_jobs(request: web.Request) -> web.Response:
    raise ApiError(501, "not_implemented", "job list is not implemented yet")


async def get_job(request: web.Request) -> web.Response:
    raise ApiError(501, "not_implemented", "job meta is not implemented yet")
