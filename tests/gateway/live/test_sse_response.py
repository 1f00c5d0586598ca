"""The aiohttp behaviour ``gateway.live.sse_response.SSEResponse`` relies on, pinned in one place.

An aiohttp upgrade that changes any of it fails here, not somewhere in the subscriber's hot path:
the payload writer and its attributes, how a write is framed on the wire (bytes put straight on
the transport must read exactly like aiohttp's own writes), and that a write up to aiohttp's
drain threshold returns before the client has read it.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.live.frames import Shared
from gateway.live.sse_response import SSEResponse, http_chunk
from tests.support.sse_client import dechunk

Handler = Callable[[SSEResponse], Awaitable[None]]


@pytest.fixture
async def serve_sse() -> AsyncIterator[Callable[[Handler], Awaitable[TestServer]]]:
    servers: list[TestServer] = []

    async def make(body: Handler) -> TestServer:
        async def handler(request: web.Request) -> web.StreamResponse:
            resp = SSEResponse()
            await resp.prepare(request)
            await body(resp)
            await resp.write_eof()
            return resp

        app = web.Application()
        app.router.add_get("/s", handler)
        server = TestServer(app)
        await server.start_server()
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.close()


async def raw_get(server: TestServer, version: str) -> tuple[bytes, bytes]:
    """(head, body as sent on the wire) of ``GET /s`` over a plain socket."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(f"GET /s HTTP/{version}\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    data = await asyncio.wait_for(reader.read(-1), 10)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


async def test_the_payload_writer_has_what_the_response_uses(
    serve_sse: Callable[[Handler], Awaitable[TestServer]],
) -> None:
    seen: dict[str, object] = {}

    async def body(resp: SSEResponse) -> None:
        writer = resp._payload_writer
        seen["writer"] = writer is not None
        await resp.send(b"data: x\n\n")
        writer = resp._payload_writer
        seen["buffer_size"] = isinstance(getattr(writer, "buffer_size", None), int)
        seen["chunked"] = getattr(writer, "chunked", None)
        seen["compress"] = getattr(writer, "_compress", "missing")
        seen["drain"] = asyncio.iscoroutinefunction(getattr(writer, "drain", None))
        seen["framing_known"] = resp.framing_known

    head, _ = await raw_get(await serve_sse(body), "1.1")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"text/event-stream" in head and b"Transfer-Encoding: chunked" in head
    assert seen == {
        "writer": True,
        "buffer_size": True,
        "chunked": True,
        "compress": None,
        "drain": True,
        "framing_known": True,
    }


@pytest.mark.parametrize("version", ["1.1", "1.0"])
async def test_shared_bytes_put_on_the_transport_read_like_aiohttp_writes(
    serve_sse: Callable[[Handler], Awaitable[TestServer]], version: str
) -> None:
    """HTTP/1.1 frames the body in chunks, HTTP/1.0 sends it as is: ``put_shared`` must frame its
    bytes the same way, between two of aiohttp's own writes."""
    shared = Shared(b"id: 1-0\ndata: {}\n\n" * 3, (1, 0), False, 3)

    async def body(resp: SSEResponse) -> None:
        await resp.send(b"retry: 10\n\n")
        written = resp.put_shared(shared)
        assert written == len(http_chunk(shared.blob) if version == "1.1" else shared.blob)
        await resp.send(b": after\n\n")

    head, wire = await raw_get(await serve_sse(body), version)
    expected = b"retry: 10\n\n" + shared.blob + b": after\n\n"
    if version == "1.1":
        assert b"Transfer-Encoding: chunked" in head
        assert dechunk(wire) == expected
        assert shared.wire_chunked is not None and shared.wire_chunked in wire, "framed once, kept"
    else:
        assert b"Transfer-Encoding" not in head
        assert wire == expected


async def test_a_write_up_to_aiohttps_drain_threshold_returns_before_the_client_reads(
    serve_sse: Callable[[Handler], Awaitable[TestServer]],
) -> None:
    """With the writer's counter reset, ``send`` hands a chunk to the transport and returns even
    while the transport is paused (its write buffer limit is 0); ``drain`` then waits until the
    client has read it. The subscriber's pacing rests on exactly this."""
    result: dict[str, int] = {}
    sends = 3
    blob = b"data: " + b"x" * (60 * 1024) + b"\n\n"
    may_read = asyncio.Event()

    async def body(resp: SSEResponse) -> None:
        sock = resp._transport.get_extra_info("socket")  # type: ignore[union-attr]
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # the kernel takes little
        for _ in range(sends):
            await asyncio.wait_for(resp.send(blob), 1)
        result["unsent"] = resp.unsent()
        may_read.set()
        await asyncio.wait_for(resp.drain(), 10)
        result["after_drain"] = resp.unsent()

    server = await serve_sse(body)
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    writer.write(b"GET /s HTTP/1.1\r\nHost: t\r\n\r\n")
    await asyncio.wait_for(may_read.wait(), 5)
    data = b""
    while data.count(b"x") < sends * 60 * 1024:
        data += await asyncio.wait_for(reader.read(1 << 16), 5)
    writer.close()
    assert result["unsent"] > len(blob), "send returned while the client had read nothing"
    await asyncio.sleep(0.1)
    assert result["after_drain"] == 0


async def test_compression_is_refused() -> None:
    with pytest.raises(RuntimeError, match="never compressed"):
        SSEResponse().enable_compression()
