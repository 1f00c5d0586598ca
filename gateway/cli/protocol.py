"""The HTTP/1.1 connection ``logbroker serve`` runs: aiohttp's own, plus a deadline for a
request's headers and the API's JSON error shape for what aiohttp's parser refuses.

aiohttp has neither. Its ``keepalive_timeout`` closes a connection only once it has waited that
long for a request (75 s under ``serve``), however slowly the headers trickle in: 1,000
connections sending a header line every 5 s held their descriptors for a minute (slowloris). Its
parser's refusals (a 10 KB path, a 9 KB ``Authorization`` header, a NUL in a header, bad chunked
framing) were answered in plain text quoting the offending bytes, a bearer token included, and
logged the same way; a framing error in the middle of a body left its handler waiting forever.

aiohttp has no supported hook for the protocol class: a ``web.Server`` makes one per connection,
and an ``AppRunner`` makes the server. The three subclasses here are that chain; the aiohttp
internals they rely on are pinned in tests/gateway/cli/test_aiohttp_protocol.py, so an upgrade
that moves one fails there, not in production.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    PayloadEncodingError,
)
from aiohttp.web_protocol import RequestHandler, RequestPayloadError, _ErrInfo
from aiohttp.web_request import BaseRequest

from ..api.error_middleware import error_body, error_response

log = logging.getLogger(__name__)

# aiohttp's 8190 for both is below a bearer JWT with many claims. Two different numbers on
# purpose: which one a LineTooLong names says whether the request line or a header was too long.
MAX_REQUEST_TARGET_BYTES = 20 * 1024  # path and query: a ?token= of MAX_HEADER_BYTES and the rest
MAX_HEADER_BYTES = 16 * 1024  # one header line, name and value (Authorization: Bearer <JWT>)
MAX_HEADERS = 128  # aiohttp's default
TOO_MANY_HEADERS = "Too many headers received"  # aiohttp's parser says only this (pinned)
LINGER_S = 1.0  # after a 408: the client's last bytes are drained, not answered by a reset
MALFORMED_BODY = "the chunked framing of the request body is malformed"

# what each parser refusal is called; never the parser's own message, which quotes the request
_MALFORMED: tuple[tuple[type[HttpProcessingError], str], ...] = (
    (BadHttpMethod, "malformed request line: no valid method first (TLS sent to a plain HTTP port?)"),
    (BadStatusLine, "malformed request line (expected: METHOD /path HTTP/1.1)"),
    (InvalidURLError, "malformed request target"),
    (InvalidHeader, "malformed request header"),
    (PayloadEncodingError, "malformed body framing (chunk sizes, Transfer-Encoding or Content-Length)"),
    (HttpProcessingError, "malformed HTTP/1.1 request: its request line, a header or the chunked framing"),
)


def refusal(exc: BaseException | None, status: int) -> tuple[int, str, str]:
    """(status, code, message) answering what aiohttp's parser refused, or a failure that escaped
    the app's error middleware (``status``, 500 or 504)."""
    if isinstance(exc, LineTooLong):
        if int(exc.args[1]) == MAX_REQUEST_TARGET_BYTES:
            return 414, "uri_too_long", f"the request target is over {MAX_REQUEST_TARGET_BYTES} bytes"
        return 431, "header_too_large", f"a request header is over {MAX_HEADER_BYTES} bytes (name and value)"
    if isinstance(exc, HttpProcessingError):
        if exc.message == TOO_MANY_HEADERS:
            return 431, "header_too_large", f"more than {MAX_HEADERS} request headers"
        return 400, "bad_request", next(text for kind, text in _MALFORMED if isinstance(exc, kind))
    return status, "internal_error", "unexpected server error (logged)"


def timeout_answer(header_timeout_s: float) -> bytes:
    """The whole 408 written when a request's headers are late (no request exists to answer)."""
    message = f"the request's headers did not arrive within {header_timeout_s:g} s"
    body = json.dumps(error_body("request_timeout", message)).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class GatewayProtocol(RequestHandler):
    """One client connection. Its wait for a request's headers lasts at most ``header_timeout_s``:
    counted from the accept for its first request, from the first byte after the previous answer
    for the next one (an idle kept-alive connection is aiohttp's ``keepalive_timeout``'s). When the
    deadline passes while the connection still waits for headers, it answers 408 (if any byte came)
    and closes; a request being handled, its body and its stream are never cut by it."""

    __slots__ = (
        "_awaiting_headers",
        "_header_bytes",
        "_header_timeout_s",
        "_header_timer",
        "_timeout_answer",
    )

    def __init__(
        self, manager: web.Server, *, header_timeout_s: float, timeout_answer: bytes, **kwargs: Any
    ) -> None:
        limits = {"max_line_size": MAX_REQUEST_TARGET_BYTES, "max_field_size": MAX_HEADER_BYTES}
        super().__init__(manager, **{**kwargs, **limits, "max_headers": MAX_HEADERS})
        self._header_timeout_s = header_timeout_s
        self._timeout_answer = timeout_answer
        self._header_timer: asyncio.TimerHandle | None = None
        self._awaiting_headers = True  # the first request's headers are due from the accept
        self._header_bytes = False  # some of them came

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_header_deadline()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        parsed = self._request_count
        super().data_received(data)
        if self._request_count != parsed:  # a request's headers are complete, or were refused
            self._disarm_header_deadline()
            self._awaiting_headers = False
            self._fail_the_body_in_hand()
        elif data and self._awaiting_headers:
            self._header_bytes = True
            if self._header_timer is None:
                self._arm_header_deadline()

    async def finish_response(
        self, request: BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        answered = await super().finish_response(request, resp, start_time)
        if not self._messages:  # the next request's headers are still to come
            self._awaiting_headers = True
            self._header_bytes = False
        return answered

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's answer to what its parser refused (and to a failure that escaped the app's
        middleware), in the API's JSON shape. Neither the answer nor the log line quotes the
        request: aiohttp's message holds the offending bytes, a token among them."""
        status, code, text = refusal(exc, status)
        if status >= 500:
            log.error("unexpected error answering %s", request.remote, exc_info=exc)
        else:
            log.info(
                "refused a request from %s: %d %s (%s)", request.remote, status, code, type(exc).__name__
            )
        if request.writer.output_size > 0:  # as aiohttp: an answer has begun, none can follow
            raise ConnectionError("an answer was sent already; cannot send the error answer")
        resp = error_response(status, code, text)
        resp.force_close()
        return resp

    def _fail_the_body_in_hand(self) -> None:
        """A framing error in the body a handler is reading (aiohttp queues it as the next
        request's error and leaves that handler waiting for the rest forever): the handler's read
        fails instead (ingest answers 400 ``invalid_body``), and nothing follows that answer."""
        request = self._current_request
        if request is None or not self._messages or not isinstance(self._messages[-1][0], _ErrInfo):
            return  # no handler is running: aiohttp answers the refusal itself (handle_error)
        self.close()
        if not request.content.is_eof():
            request.content.set_exception(RequestPayloadError(MALFORMED_BODY))

    def _arm_header_deadline(self) -> None:
        self._header_timer = self._loop.call_later(self._header_timeout_s, self._header_deadline_passed)

    def _disarm_header_deadline(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_deadline_passed(self) -> None:
        self._header_timer = None
        waiter, transport = self._waiter, self.transport
        if waiter is None or waiter.done() or transport is None:
            return  # handling a request (or draining a body it left unread): the next bytes re-arm
        peer, timeout_s = _address(self.peername), self._header_timeout_s
        if not self._header_bytes:
            log.debug("closed the connection of %s: no request in %g s", peer, timeout_s)
            self.force_close()
            return
        log.info("answered 408 to %s: its request headers were incomplete after %g s", peer, timeout_s)
        self._force_close = True  # from here on, what the client sends is dropped unread
        self._awaiting_headers = False
        waiter.cancel()  # ends aiohttp's wait for the request, as its keep-alive timeout does
        transport.write(self._timeout_answer)
        if transport.can_write_eof():
            transport.write_eof()
        self._loop.call_later(LINGER_S, transport.close)


def _address(peer: object) -> str:
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)


class GatewayServer(web.Server):
    """aiohttp's server, making a :class:`GatewayProtocol` for each connection."""

    def __init__(self, handler: Any, *, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.header_timeout_s = header_timeout_s
        self.timeout_answer = timeout_answer(header_timeout_s)

    def __call__(self) -> RequestHandler:
        return GatewayProtocol(
            self, loop=self._loop, header_timeout_s=self.header_timeout_s,
            timeout_answer=self.timeout_answer, **self._kwargs,
        )  # fmt: skip


class GatewayRunner(web.AppRunner):
    """aiohttp's runner for an app, serving it with a :class:`GatewayServer`."""

    __slots__ = ("_header_timeout_s",)

    def __init__(self, app: web.Application, *, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._header_timeout_s = header_timeout_s

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()  # starts the app; its server has the app's handler
        return GatewayServer(
            made.request_handler, request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation, loop=made._loop,
            header_timeout_s=self._header_timeout_s, **made._kwargs,
        )  # fmt: skip
