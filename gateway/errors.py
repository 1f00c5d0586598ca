"""HTTP errors: one exception type, one middleware that turns everything into JSON.

Every error answer is ``{"error": {"code": "...", "message": "..."}}`` with the right status
(DESIGN §5); third-party errors are translated here and nowhere else.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import redis
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from broker.errors import CodecError, InvalidEntry

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


def bad_request(code: str, message: str) -> ApiError:
    return ApiError(400, code, message)


def not_found(job: str) -> ApiError:
    return ApiError(404, "job_not_found", f"job {job!r} does not exist (or has expired)")


_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as e:
        return error_response(e.status, e.code, e.message, e.headers)
    except InvalidEntry as e:
        return error_response(400, f"invalid_{e.field.split('.')[0].split('[')[0]}", str(e))
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = _HTTP_CODES.get(e.status, "http_error")
        return error_response(
            e.status, code, e.reason or code, {"Allow": e.headers["Allow"]} if "Allow" in e.headers else None
        )
    except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
        log.warning("Redis unavailable for %s %s: %s", request.method, request.path, e)
        return error_response(
            503, "redis_unavailable", "Redis is not reachable; retry later", {"Retry-After": "1"}
        )
    except redis.RedisError as e:  # a refusal (WRONGTYPE, OOM...): retrying as-is will not help
        log.error("Redis refused %s %s: %s", request.method, request.path, e)
        return error_response(500, "redis_error", f"Redis refused the operation: {type(e).__name__}")
    except RequestPayloadError as e:  # a body that could not even be read (bad Content-Encoding...)
        return error_response(400, "invalid_body", f"the request body could not be read: {e}")
    except CodecError as e:
        log.error("undecodable data for %s: %s", request.path, e)
        return error_response(500, "corrupt_entry", str(e))
    except Exception:  # a bug: still answer in the API's shape, and say so loudly in the log
        log.exception("unexpected error for %s %s", request.method, request.path)
        return error_response(500, "internal_error", "unexpected server error (logged)")
