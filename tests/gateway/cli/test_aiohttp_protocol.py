"""The aiohttp internals ``gateway.cli.protocol`` relies on, pinned in one place.

An aiohttp upgrade that changes any of them fails here: ``AppRunner._make_server`` gives the
app's ``Server``, which makes its protocol from ``_loop`` and ``_kwargs``; the C parser's
``LineTooLong`` names the limit it hit and its "too many headers" message; a ``RequestHandler``
awaits ``_waiter`` only while it waits for a request, counts a request in ``_request_count``
once its headers are parsed, holds it in ``_current_request`` while its handler runs, and queues
a parse error as an ``_ErrInfo`` in ``_messages``. tests/gateway/cli/test_serve_http_protocol.py
checks the behaviour built on them against a real ``logbroker serve``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong

from gateway.api.auth import RedactingAccessLogger
from gateway.cli.protocol import (
    MALFORMED_BODY,
    MAX_HEADER_BYTES,
    MAX_HEADERS,
    MAX_REQUEST_TARGET_BYTES,
    TOO_MANY_HEADERS,
    GatewayProtocol,
    GatewayRunner,
    GatewayServer,
    refusal,
)

LEAK = b"T0KEN-THAT-MUST-NOT-LEAK"
Read = Callable[[web.Request], None]


class Site:
    """A running ``GatewayRunner`` with one POST route whose handler waits until released."""

    def __init__(self, runner: GatewayRunner) -> None:
        self.runner = runner
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.body_error: BaseException | None = None

    async def handler(self, request: web.Request) -> web.Response:
        self.entered.set()
        await self.release.wait()
        try:
            await request.read()
        except Exception as e:
            self.body_error = e
            return web.Response(status=400)
        return web.Response(text="ok")

    @property
    def server(self) -> web.Server:
        assert self.runner.server is not None
        return self.runner.server

    @property
    def port(self) -> int:
        return int(self.runner.addresses[0][1])

    async def protocol(self) -> GatewayProtocol:
        for _ in range(100):
            if self.server.connections:
                (proto,) = self.server.connections
                assert isinstance(proto, GatewayProtocol)
                return proto
            await asyncio.sleep(0.01)
        raise AssertionError("no connection")


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    app = web.Application()
    runner = GatewayRunner(
        app, header_timeout_s=30, keepalive_timeout=7, handler_cancellation=True,
        access_log_class=RedactingAccessLogger, auto_decompress=False,
    )  # fmt: skip
    s = Site(runner)
    app.router.add_post("/p", s.handler)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield s
    s.release.set()
    await runner.cleanup()


async def test_the_runner_serves_with_our_protocol_and_the_runs_settings(site: Site) -> None:
    server = site.server
    assert isinstance(server, GatewayServer) and server.handler_cancellation
    proto = server()
    assert isinstance(proto, GatewayProtocol)
    assert proto.keepalive_timeout == 7, "the runner's keyword arguments reach the protocol"
    assert isinstance(proto.access_logger, RedactingAccessLogger)
    assert (proto.max_line_size, proto.max_field_size, proto.max_headers) == (
        MAX_REQUEST_TARGET_BYTES, MAX_HEADER_BYTES, MAX_HEADERS,
    )  # fmt: skip


async def test_the_parser_names_the_limit_it_hit_and_quotes_the_request(site: Site) -> None:
    """Which limit a ``LineTooLong`` names tells a request line from a header; its message quotes
    the request (why ``refusal`` never passes it on)."""

    def refused(raw: bytes) -> BaseException:
        parser = site.server()._parser
        assert parser is not None
        with pytest.raises(BadHttpMessage) as e:
            parser.feed_data(raw)
        return e.value

    target = refused(b"GET /?token=" + LEAK + b"a" * MAX_REQUEST_TARGET_BYTES + b" HTTP/1.1\r\n\r\n")
    assert isinstance(target, LineTooLong) and int(target.args[1]) == MAX_REQUEST_TARGET_BYTES
    assert LEAK in str(target).encode() and refusal(target, 400)[:2] == (414, "uri_too_long")
    name = b"Authorization"
    value = b"Bearer " + LEAK + b"a" * (MAX_HEADER_BYTES - len(name) - len(LEAK) - 7)
    header = refused(b"GET / HTTP/1.1\r\n" + name + b": " + value + b"a\r\n\r\n")
    assert isinstance(header, LineTooLong) and int(header.args[1]) == MAX_HEADER_BYTES
    assert LEAK in str(header).encode() and refusal(header, 400)[:2] == (431, "header_too_large")
    many = refused(
        b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(MAX_HEADERS + 1)) + b"\r\n"
    )
    assert many.message == TOO_MANY_HEADERS and refusal(many, 400)[:2] == (431, "header_too_large")
    nul = refused(b"GET / HTTP/1.1\r\nAuthorization: Bearer " + LEAK + b"\x00\r\n\r\n")
    assert LEAK in str(nul).encode() and refusal(nul, 400)[:2] == (400, "bad_request")
    parser = site.server()._parser
    assert parser is not None
    messages, _, _ = parser.feed_data(b"GET / HTTP/1.1\r\nHost: t\r\n" + name + b": " + value + b"\r\n\r\n")
    assert len(messages) == 1, "a header of exactly MAX_HEADER_BYTES (name and value) is taken"


async def test_the_waiter_the_request_count_and_the_current_request(site: Site) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
    try:
        proto = await site.protocol()
        await asyncio.sleep(0.05)
        waiter = proto._waiter
        assert waiter is not None and not waiter.done(), "waiting for a request: the waiter is pending"
        assert proto._request_count == 0 and proto._current_request is None
        writer.write(b"POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n12345")
        await asyncio.wait_for(site.entered.wait(), 5)
        assert proto._request_count == 1, "counted once its headers are parsed, before its body"
        assert proto._waiter is None and proto._current_request is not None and not proto._messages
        writer.write(b"67890")
        site.release.set()
        assert (await asyncio.wait_for(reader.readuntil(b"ok"), 5)).startswith(b"HTTP/1.1 200")
        await asyncio.sleep(0.05)
        waiter = proto._waiter
        assert waiter is not None and not waiter.done(), "kept alive: waiting for the next request"
        assert proto._current_request is None
    finally:
        writer.close()


async def test_a_framing_error_inside_a_body_is_queued_as_an_error_and_fails_the_read(site: Site) -> None:
    """aiohttp queues the refusal as an ``_ErrInfo`` for after the handler, which waited for the
    rest of its body forever; the protocol fails that handler's read instead."""
    reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
    try:
        writer.write(b"POST /p HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n[]\r\n")
        await asyncio.wait_for(site.entered.wait(), 5)
        writer.write(b"zz\r\n" + LEAK + b"\r\n")
        await asyncio.sleep(0.05)
        site.release.set()
        answer = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 400") and LEAK not in answer
    assert str(site.body_error) == MALFORMED_BODY
