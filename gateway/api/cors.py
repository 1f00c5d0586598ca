"""CORS allow-list (``LOGBROKER_CORS_ORIGINS``): which other web origins may call the API.

Empty (the default): no CORS headers at all, so browsers allow same-origin pages only (the
built-in viewer is same-origin). For an allowed ``Origin`` every answer, errors and SSE streams
included, carries ``Access-Control-Allow-Origin`` echoing it and ``Vary: Origin``; a preflight
``OPTIONS`` is answered 204 for an allowed origin and 403 JSON for any other.

Why no aiohttp-cors: it wants every route registered with it (and a resource per route for
``OPTIONS``), while this is one allow-list for the whole API; and the headers must be added in
``on_response_prepare``, because an SSE response is prepared inside its handler, before any
middleware could touch it afterwards. Credentials (cookies) are never allowed: tokens travel in
``Authorization`` or ``?token=``.
"""

from __future__ import annotations

from collections.abc import Collection

from aiohttp import web
from aiohttp.typedefs import Middleware

from ..errors import ApiError
from ..settings import ANY_ORIGIN as ANY
from .error_middleware import Handler

ALLOW_METHODS = "GET, POST, OPTIONS"
ALLOW_HEADERS = "Authorization, Last-Event-ID, Content-Type"
EXPOSE_HEADERS = "Retry-After, WWW-Authenticate"
MAX_AGE_S = 600


def _allowed(request: web.BaseRequest, origins: Collection[str]) -> str | None:
    origin = request.headers.get("Origin")
    if origin is None or (ANY not in origins and origin.lower() not in origins):
        return None
    return origin


def install(app: web.Application, origins: Collection[str]) -> None:
    """Add the CORS headers to every answer to an allowed origin (nothing when ``origins`` is
    empty). The preflight middleware is separate: see :func:`preflight_middleware`."""
    if not origins:
        return

    async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
        origin = _allowed(request, origins)
        if origin is None:
            return
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
        response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
        vary = response.headers.get("Vary")
        if vary is None:
            response.headers["Vary"] = "Origin"
        elif "origin" not in vary.lower():
            response.headers["Vary"] = f"{vary}, Origin"

    app.on_response_prepare.append(add_headers)


def preflight_middleware(origins: Collection[str]) -> Middleware:
    """Answers ``OPTIONS`` preflights before auth (a preflight never carries credentials)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
            return await handler(request)
        if "Origin" not in request.headers:
            return await handler(request)
        if _allowed(request, origins) is None:
            raise ApiError(403, "origin_not_allowed", "this origin is not in LOGBROKER_CORS_ORIGINS")
        headers = {"Access-Control-Allow-Methods": ALLOW_METHODS, "Access-Control-Max-Age": str(MAX_AGE_S)}
        return web.Response(status=204, headers=headers)

    return middleware
