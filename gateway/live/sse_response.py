"""The SSE answer: a ``web.StreamResponse`` and the one place that knows aiohttp's internals.

The subscriber's hot path needs more than aiohttp's public API gives: a write that returns
before the socket has taken it (aiohttp's own ``write`` waits for a drain past 64 KiB of a counter
it keeps, which would hold a copy of the data), an explicit drain, the response's wire framing
(``Transfer-Encoding: chunked`` or not) so that bytes shared by many clients can be framed once
and written straight to the transport, and the kernel's send queue of the socket. All of it is
here, as aiohttp-sse keeps its one ``_payload_writer`` use inside its response class, and
``tests/gateway/live/test_sse_response.py`` pins the aiohttp behaviour it relies on (aiohttp 3.x:
``StreamResponse._payload_writer`` with ``buffer_size``, ``chunked``, ``_compress`` and ``drain``).
"""

from __future__ import annotations

import asyncio
import fcntl
import sys
import termios

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from ..errors import ClientGone
from . import sse
from .frames import Shared

_OUTQ: int | None = getattr(termios, "TIOCOUTQ", None)


class SSEResponse(web.StreamResponse):
    def __init__(self) -> None:
        super().__init__(headers=sse.HEADERS)
        self._transport: asyncio.Transport | None = None
        self._wire_chunked: bool | None = None  # the wire framing, known after the first write

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        writer = await super().prepare(request)
        transport = request.transport
        if transport is not None:
            transport.set_write_buffer_limits(high=0)  # a write waits until the socket took the last
            self._transport = transport  # kept: it reports closing once the connection is gone
        return writer

    def enable_compression(self, *args: object, **kwargs: object) -> None:
        """Refused: an event must reach the client when it is written, not when a compressor
        decides to flush, and shared bytes are written to many clients as they are."""
        raise RuntimeError("SSE responses are never compressed")

    @property
    def framing_known(self) -> bool:
        """Whether pre-framed shared bytes can go straight to the transport (``put_shared``)."""
        return self._wire_chunked is not None

    async def send(self, blob: bytes) -> None:
        """Hand ``blob`` to the transport without waiting for the client to take it (``drain``
        does that); ``ClientGone`` when the connection is gone."""
        if not blob:
            return
        writer = self._payload_writer
        if writer is not None:
            writer.buffer_size = 0  # aiohttp drains past 64 KiB of this counter: ``drain`` decides
        try:
            await self.write(blob)
        except (ConnectionError, RuntimeError) as e:  # reset by peer, reaped, or transport closed
            raise ClientGone from e
        self._learn_framing()

    async def drain(self) -> None:
        """Wait until the socket has taken what was written."""
        writer = self._payload_writer
        if writer is None:
            return
        try:
            await writer.drain()
        except (ConnectionError, RuntimeError) as e:
            raise ClientGone from e

    def put_shared(self, shared: Shared) -> int:
        """Write bytes shared with other clients straight to the transport, framed as this
        response frames its body (the chunk is built once for all chunked responses); returns
        the bytes written. Only once ``framing_known``."""
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ClientGone
        if self._wire_chunked:
            data = shared.wire_chunked
            if data is None:
                data = shared.wire_chunked = http_chunk(shared.blob)
        else:
            data = shared.blob
        transport.write(data)
        return len(data)

    @property
    def closing(self) -> bool:
        return self._transport is None or self._transport.is_closing()

    def unsent(self) -> int:
        """Bytes written that the transport has not handed to the kernel yet."""
        return self._transport.get_write_buffer_size() if self._transport is not None else 0

    def kernel_queued(self) -> int:
        return kernel_queued(self._transport)

    def abort(self) -> None:
        """Close the connection at once: the client sees a broken stream, never a clean end."""
        if self._transport is not None:
            self._transport.abort()

    def _learn_framing(self) -> None:
        """Only once aiohttp has sent the headers (it holds them back until the first write), and
        never for a compressed body: unknown framing means shared bytes are never put directly."""
        if self._wire_chunked is None:
            writer = self._payload_writer
            chunked = getattr(writer, "chunked", None)
            if isinstance(chunked, bool) and getattr(writer, "_compress", None) is None:
                self._wire_chunked = chunked


def http_chunk(blob: bytes) -> bytes:
    """``blob`` as one HTTP/1.1 chunk (``Transfer-Encoding: chunked``), as aiohttp frames a write."""
    return b"%x\r\n%b\r\n" % (len(blob), blob)


def kernel_queued(transport: asyncio.BaseTransport | None) -> int:
    """Bytes in the socket's kernel send queue (Linux ``SIOCOUTQ``); 0 where unknown."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or _OUTQ is None:
        return 0
    buf = bytearray(4)
    try:
        fcntl.ioctl(sock.fileno(), _OUTQ, buf, True)
    except (OSError, ValueError):
        return 0
    return int.from_bytes(buf, sys.byteorder)
