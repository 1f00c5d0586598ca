"""The one middleware that turns every failure of a request into the API's JSON error shape.

Every error answer is ``{"error": {"code": "...", "message": "..."}}`` with the right status
(docs/design.md §5). aiohttp's own HTTP errors and Redis errors are translated here (the latter
through ``gateway.errors.redis_failure``), and a bug is still answered in that shape. The one
exception is OTLP's ``POST /v1/logs``: its spec requires a ``google.rpc.Status`` in the request's
encoding (``gateway.otlp_wire``), so the same error (auth refusals included) is encoded so there.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import redis
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from broker.errors import CodecError, InvalidEntry

from ..errors import ApiError, redis_failure
from ..otlp_wire import OTLP_LOGS_PATH, PROTOBUF, encode_status

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    """The one JSON shape of every error answer (also written by ``gateway.cli.protocol``)."""
    return {"error": {"code": code, "message": message}}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(error_body(code, message), status=status, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Exception as e:
        status, code, message, headers = _error_of(request, e)
    if request.path == OTLP_LOGS_PATH and request.method == "POST":
        protobuf = request.content_type == PROTOBUF
        body = encode_status(status, f"{code}: {message}", not protobuf)
        ctype = PROTOBUF if protobuf else "application/json"
        return web.Response(status=status, body=body, content_type=ctype, headers=headers)
    return error_response(status, code, message, headers)


def _error_of(request: web.Request, e: Exception) -> tuple[int, str, str, dict[str, str] | None]:
    """(status, code, message, headers) of a failure; re-raises what is not one (a redirect)."""
    if isinstance(e, ApiError):
        return e.status, e.code, e.message, e.headers
    if isinstance(e, InvalidEntry):
        return 400, f"invalid_{e.field.split('.')[0].split('[')[0]}", str(e), None
    if isinstance(e, web.HTTPException):
        if e.status < 400:
            raise e
        code = _HTTP_CODES.get(e.status, "http_error")
        return (
            e.status,
            code,
            e.reason or code,
            {"Allow": e.headers["Allow"]} if "Allow" in e.headers else None,
        )
    if isinstance(e, redis.RedisError | OSError):
        failure = redis_failure(e)
        log.log(
            logging.WARNING if failure.status == 503 else logging.ERROR,
            "Redis failed %s %s: %s",
            request.method,
            request.path,
            e,
        )
        return failure.status, failure.code, failure.message, failure.headers
    if isinstance(e, RequestPayloadError):  # a body that could not even be read (bad Content-Encoding...)
        return 400, "invalid_body", f"the request body could not be read: {e}", None
    if isinstance(e, CodecError):
        log.error("undecodable data for %s: %s", request.path, e)
        return 500, "corrupt_entry", str(e), None
    # a bug: still answer in the API's shape, and say so loudly in the log
    log.error("unexpected error for %s %s", request.method, request.path, exc_info=e)
    return 500, "internal_error", "unexpected server error (logged)", None


def _answer(e: ApiError) -> web.Response:
    return error_response(e.status, e.code, e.message, e.headers)
