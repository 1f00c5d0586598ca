"""A gateway's answer to a status-code decision, in one place (docs/design.md §5 "Errors").

2xx is the caller's to read; 408, 429 and 5xx are :class:`ServerError` (retried, waiting at least
``Retry-After``); any other 4xx is a :class:`Refused` of the status's class, carrying the JSON
error's ``code`` and ``message``. A body that is not the API's error shape (a proxy's HTML page)
still gives a clear error: ``http_<status>`` and the start of the text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from .errors import BadRequest, Forbidden, NotFound, Refused, ServerError, Unauthorized

ERROR_BODY_BYTES = 64 * 1024  # what is read of an error answer: enough for any message
_MAX_RETRY_AFTER_S = 300.0
_REFUSALS: dict[int, type[Refused]] = {400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound}
_RETRYABLE = frozenset({408, 429})


def check_status(status: int, headers: Mapping[str, str], body: bytes, url: str) -> None:
    """Return for a 2xx answer, else raise what the status means."""
    if 200 <= status < 300:
        return
    code, message = error_of(status, body)
    if status >= 500 or status in _RETRYABLE:
        raise ServerError(status, code, message, url, retry_after_s(headers))
    if status == 404 and code == "not_found":
        message += " (is the base URL a logbroker gateway?)"
    raise _REFUSALS.get(status, Refused)(status, code, message, url)


def error_of(status: int, body: bytes) -> tuple[str, str]:
    try:
        err = json.loads(body)["error"]
        code, message = err["code"], err["message"]
        if isinstance(code, str) and isinstance(message, str):
            return code, message
    except (ValueError, KeyError, TypeError):
        pass
    text = body[:300].decode("utf-8", "replace").strip()
    return f"http_{status}", text or "(no body)"


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """``Retry-After`` in seconds (the gateway and nginx send seconds; a date is ignored)."""
    value = headers.get("retry-after", "").strip()
    if not value.isdigit():
        return None
    return min(float(value), _MAX_RETRY_AFTER_S)


def media_type(headers: Mapping[str, str]) -> str:
    return headers.get("content-type", "").partition(";")[0].strip().lower()
