"""The one middleware that turns every failure of a request into the API's JSON error shape.

Every error answer is ``{"error": {"code": "...", "message": "..."}}`` with the right status
(docs/design.md §5). aiohttp's own HTTP errors and Redis errors are translated here (the latter
through ``gateway.errors.redis_failure``), and a bug is still answered in that shape.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import redis
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from broker.errors import CodecError, InvalidEntry

from ..errors import ApiError, redis_failure

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
    except ApiError as e:
        return _answer(e)
    except InvalidEntry as e:
        return error_response(400, f"invalid_{e.field.split('.')[0].split('[')[0]}", str(e))
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = _HTTP_CODES.get(e.status, "http_error")
        return error_response(
            e.status, code, e.reason or code, {"Allow": e.headers["Allow"]} if "Allow" in e.headers else None
        )
    except (redis.RedisError, OSError) as e:
        failure = redis_failure(e)
        log.log(
            logging.WARNING if failure.status == 503 else logging.ERROR,
            "Redis failed %s %s: %s",
            request.method,
            request.path,
            e,
        )
        return _answer(failure)
    except RequestPayloadError as e:  # a body that could not even be read (bad Content-Encoding...)
        return error_response(400, "invalid_body", f"the request body could not be read: {e}")
    except CodecError as e:
        log.error("undecodable data for %s: %s", request.path, e)
        return error_response(500, "corrupt_entry", str(e))
    except Exception:  # a bug: still answer in the API's shape, and say so loudly in the log
        log.exception("unexpected error for %s %s", request.method, request.path)
        return error_response(500, "internal_error", "unexpected server error (logged)")


def _answer(e: ApiError) -> web.Response:
    return error_response(e.status, e.code, e.message, e.headers)
