"""The gateway's errors, in one tree; third-party errors become these at one seam each.

Hierarchy::

    LogbrokerError                  (broker.errors) every error logbroker raises on purpose
    └── GatewayError                raised by this package
        ├── ApiError                an error answer: status, ``code``, message, headers (docs/design.md §5)
        │   └── RedisUnavailable    503 ``redis_unavailable``: retry later (Retry-After)
        ├── ClientGone              an SSE client disconnected, or stopped reading (gateway.live)
        └── RedisServerError        the embedded redis-server cannot start (gateway.cli)

Redis errors become answers in :func:`redis_failure` only: retryable ones (connection lost,
timeout, loading, failover, as ``broker.delivery.is_retryable`` classifies them) are a 503, the
rest (a refusal such as WRONGTYPE) a 500. The API's middleware turns every ``ApiError`` into
``{"error": {"code": ..., "message": ...}}`` (``gateway.api.error_middleware``).
"""

from __future__ import annotations

from broker.delivery import is_retryable
from broker.errors import LogbrokerError

RETRY_AFTER_S = 1  # what a 503 redis_unavailable tells clients to wait


class GatewayError(LogbrokerError):
    """Base class of the gateway's errors."""


class ApiError(GatewayError):
    """An error answer; raised anywhere in a request, answered by the error middleware."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


class RedisUnavailable(ApiError):
    """Redis is not reachable (or failing over): the client retries the same request later."""

    def __init__(self, message: str = "Redis is not reachable; retry later") -> None:
        super().__init__(503, "redis_unavailable", message, {"Retry-After": str(RETRY_AFTER_S)})


class ClientGone(GatewayError):
    """The SSE client disconnected, or stopped reading for longer than the write timeout."""


class RedisServerError(GatewayError):
    """No redis-server binary, or it did not come up; the message says which and what to do."""


def bad_request(code: str, message: str) -> ApiError:
    return ApiError(400, code, message)


def not_found(job: str) -> ApiError:
    return ApiError(404, "job_not_found", f"job {job!r} does not exist (or has expired)")


def redis_failure(e: BaseException, done: str = "", refused_code: str = "redis_error") -> ApiError:
    """The answer for a Redis error; ``done`` says what the request achieved before it (ingest)."""
    detail = f"; {done}" if done else ""
    if is_retryable(e):
        return RedisUnavailable(f"Redis is not reachable ({type(e).__name__}){detail}; retry later")
    return ApiError(500, refused_code, f"Redis refused the operation: {type(e).__name__}{detail}")
