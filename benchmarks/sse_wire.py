"""The benchmarks' SSE client: an ``asyncio.Protocol`` on a plain TCP connection, no HTTP library.

Why this exists: the load generator must cost far less CPU than the gateway it measures, on the same
two cores. The aiohttp clients the benchmarks used (``resp.content.iter_any()``) spent ~1.3 µs of
CPU per delivered event in ``fanout.py`` part 1 (2.3 µs in part 2, where 10 clients also decoded
every event's JSON), more than the gateway. Measured on its own (a stand-in server in another
process, 256 KiB reads), about a third of that was aiohttp (its ``StreamReader``, chunked parser and
a future per chunk: ~0.47 µs per event against ~0.26 µs for a bare protocol, mostly the kernel's
copy) and the rest the counting itself: ``tail + chunk``, ``bytes.count`` and ``END_MARK in data``
are each a pass over every byte, and CPython's byte search runs at only ~1-2 GB/s here.

So here a connection sends one ``GET``, checks the status line, skips the response headers and then
hands every ``recv()`` result straight to its sink's ``feed`` from ``data_received`` (the wrk
approach: no reader, no future per chunk), and ``EventCounter`` makes one pass per chunk: the end
event is found with a reverse search from the chunk's end, not a second scan. ~0.5 µs per event
in all on the stand-in server (1.4-1.5 µs before), of which ~0.25 µs is the kernel.

What a sink sees is the **raw body, chunked framing included** (``\\r\\n<hex>\\r\\n`` between the
server's chunks), preceded by one ``\\n`` of our own so that an event at the very start of the body
looks like every other one. That is enough, and safe, for counting and for regexes over events:

* The server writes whole events only (the gateway's writes are ``frames()`` blobs, the naive
  gateway writes one event per write), so a chunk-size line only ever sits *between* events, where
  it ends in ``\\n`` just before the next event's first line, exactly like the ``\\n\\n`` that ends
  the previous event would without chunking.
* A chunk-size line is hex digits and ``\\r\\n``: it cannot contain ``\\nid: ``, ``\\nevent: end\\n``,
  ``\\n\\n`` or a JSON field, so counting ``ID_MARK`` (once per event frame: ``data:`` is one line
  of JSON, whose newlines are escaped) counts each event once, ``END_ID_MARK`` is found only in the
  end event, and "everything up to the last ``\\n\\n``" is still a run of complete events.
* ``recv()`` boundaries are arbitrary: sinks keep the last few bytes (``EventCounter``) or the
  incomplete last event (the timed clients) for the next chunk.

Decoding the chunked framing would need a byte-level state machine per ``recv()`` and a copy of every
payload, for nothing the benchmarks measure. A body without framing (connection-close) works the
same way.

The stream ends when the sink reports the end event (``feed`` returns True): the connection is
closed from here. The connection ending first is an error (``ConnectionError`` from ``done``), and
so is any status other than 200 (``RuntimeError`` from ``open_stream``, with the start of the body).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from harness import cpu_self_s

ID_MARK = b"\nid: "  # once in every event frame (see the module docstring)
END_MARK = b"\nevent: end\n"  # the end event's first line; both gateways put its id line right after
END_ID_MARK = END_MARK + ID_MARK[1:]  # b"\nevent: end\nid: "
EVENT_LINE = len(END_MARK) - 1  # bytes of "\nevent: end" before the end event's ID_MARK
TAIL_BYTES = len(END_ID_MARK)  # enough to see either mark across a recv boundary
STAMP_RE = re.compile(rb'"t_ns":(\d+)')  # entry_json's separators: no space after the colon
# an event's id (its millisecond part) and its t_ns; greedy to the line's end and back: a lazy
# [^\n]*? cost 6.4 us per event against 0.7 (and made the parsing clients the bottleneck)
ID_STAMP_RE = re.compile(rb'id: (\d+)-\d+\ndata: [^\n]*"t_ns":(\d+)')
MAX_HEAD_BYTES = 65536
ERROR_BODY_BYTES = 200  # what a non-200 error message shows of the body
ERROR_BODY_WAIT_S = 1.0  # how long to wait for that much of it
PACED_READ_BYTES = 4096  # what a paced (slow) connection hands its sink at a time

# seconds to stop reading after a chunk (0: go on), or None: never ask again
Pace = Callable[[], float | None]


class Sink(Protocol):
    """Takes the body as it arrives; returns True once the end event was in it (stop reading)."""

    def feed(self, chunk: bytes) -> bool: ...


def last_event_is_end(data: bytes, stop: int) -> bool:
    """Whether the last ``ID_MARK`` before ``stop`` is the end event's (``END_ID_MARK``: its ``event:``
    line right before it). The end event is the stream's last, so this needs no scan of all of
    ``data``: the reverse search stops at the last id line."""
    pos = data.rfind(ID_MARK, 0, stop)
    return pos >= EVENT_LINE and data.startswith(END_ID_MARK, pos - EVENT_LINE)


@dataclass(slots=True)
class EventCounter:
    """Counts events in raw bytes: ``ID_MARK`` in each chunk, plus one split by the recv boundary.

    One forward scan per chunk (``bytes.count``, ~1.7 GB/s here: most of this client's CPU); the
    end event is recognised from the chunk's last id line (a short reverse search), since nothing
    follows it. Only the last ``TAIL_BYTES`` of the stream are kept: a mark split between chunks
    starts in them, and the end event's ``event:`` line fits in them before its id line.
    """

    events: int = 0
    ended_at: float | None = None
    tail: bytes = b""

    def feed(self, chunk: bytes) -> bool:
        """Count one chunk; True once the end event has arrived."""
        tail = self.tail
        edge = tail[-len(ID_MARK) + 1 :] + chunk[: len(ID_MARK) - 1]  # only a mark that straddles
        self.events += chunk.count(ID_MARK) + edge.count(ID_MARK)
        pos = chunk.rfind(ID_MARK)
        if pos >= EVENT_LINE:
            ended = chunk.startswith(END_ID_MARK, pos - EVENT_LINE)
        else:  # the last id line is at the chunk's start, straddles it, or was checked before
            edge = tail + chunk[:TAIL_BYTES]
            ended = last_event_is_end(edge, len(edge))
        if ended:
            self.ended_at = time.monotonic()
            return True
        self.tail = chunk[-TAIL_BYTES:] if len(chunk) >= TAIL_BYTES else (tail + chunk)[-TAIL_BYTES:]
        return False


class SseConnection(asyncio.Protocol):
    """One ``GET`` of an SSE stream; ``opened`` once the 200 headers are in, ``done`` at the end event.

    With a ``pace``, the connection is a slow reader: it stops reading the socket
    (``pause_reading``) as soon as a chunk arrives, hands that chunk to its sink ``PACED_READ_BYTES``
    at a time, asking ``pace`` after each piece how long to wait before the next, and reads the
    socket again only once the chunk is used up. Meanwhile the data waits in the kernel's buffers,
    so the server feels TCP backpressure from a slow reader; this process holds one chunk at most.
    When ``pace`` answers None the rest goes at full speed.
    """

    def __init__(self, request: bytes, target: str, sink: Sink, pace: Pace | None = None) -> None:
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()
        self._loop = loop
        self._request = request
        self._target = target
        self._sink = sink
        self._pace = pace
        self._transport: asyncio.Transport | None = None
        self._in_body = False
        self._head = b""  # the response head until its end; then an error body, or a paced chunk
        self._at = 0  # how much of a paced chunk the sink has had
        self._status = ""  # a status line other than 200, while the error body is collected
        self._wanted = 0
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        if self._in_body:
            if self._pace is not None:
                self._paced(data)
            elif self._sink.feed(data):  # the hot path: one call into the sink per recv()
                self._finish()
        elif self._status:
            self._error_body(data)
        else:
            self._response_head(data)

    def eof_received(self) -> bool | None:
        return None  # close; connection_lost tells whoever waits

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._status and not self.opened.done():
            self._fail_status()
        if self._closing:  # closed from here: whoever closed it is not waiting for an outcome
            self.opened.cancel()
            self.done.cancel()
            return
        why = f": {exc}" if exc else ""
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"{self._target}: closed before the response{why}"))
            self.done.cancel()
        elif not self.done.done():
            self.done.set_exception(ConnectionError(f"{self._target}: closed before the end event{why}"))

    def close(self) -> None:
        """Close the connection (idempotent); pending ``opened``/``done`` are cancelled."""
        self._closing = True
        if self._transport is not None:
            self._transport.close()

    # --- before the body ---

    def _response_head(self, data: bytes) -> None:
        head = self._head + data
        end = head.find(b"\r\n\r\n")
        if end < 0:
            self._head = head
            if len(head) > MAX_HEAD_BYTES:
                self._fail(RuntimeError(f"{self._target}: no end of the response headers"))
            return
        self._head = b""
        status_line = head[: head.find(b"\r\n")].decode("latin-1")
        rest = head[end + 4 :]
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            self._fail(RuntimeError(f"{self._target}: not an HTTP response: {status_line[:100]!r}"))
            return
        if parts[1] != "200":
            self._status = status_line
            self._wanted = min(ERROR_BODY_BYTES, content_length(head[:end]))
            self._timer = self._loop.call_later(ERROR_BODY_WAIT_S, self._fail_status)
            self._error_body(rest)
            return
        self._in_body = True
        self.opened.set_result(None)
        self.data_received(b"\n" + rest)  # the leading "\n": see the module docstring

    def _error_body(self, data: bytes) -> None:
        self._head += data
        if len(self._head) >= self._wanted:
            self._fail_status()

    def _fail_status(self) -> None:
        body = self._head[:ERROR_BODY_BYTES].decode("utf-8", "replace")
        self._fail(RuntimeError(f"{self._target} answered {self._status!r}: {body!r}"))

    def _fail(self, error: Exception) -> None:
        if not self.opened.done():
            self.opened.set_exception(error)
            self.done.cancel()
        self._closing = True
        if self._transport is not None:
            self._transport.close()

    # --- the body ---

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)
        self.close()

    def _paced(self, data: bytes) -> None:
        """A chunk for the slow reader: stop reading the socket until the sink has had all of it."""
        assert self._transport is not None
        self._transport.pause_reading()
        self._head, self._at = data, 0
        self._next_piece()

    def _next_piece_later(self) -> None:
        """From the timer: a failing sink fails ``done`` (in ``data_received`` the transport does)."""
        try:
            self._next_piece()
        except Exception as e:
            if not self.done.done():
                self.done.set_exception(e)
            self.close()

    def _next_piece(self) -> None:
        """Hand the sink the next piece of the chunk; wait as ``pace`` says, or read the socket again."""
        assert self._transport is not None
        chunk = self._head
        while self._at < len(chunk) and self._pace is not None:
            piece = chunk[self._at : self._at + PACED_READ_BYTES]
            self._at += len(piece)
            if self._sink.feed(piece):
                self._finish()
                return
            delay = self._pace()
            if delay is None:
                self._pace = None  # full speed from here: the rest of the chunk at once
            elif delay > 0:
                self._timer = self._loop.call_later(delay, self._next_piece_later)
                return
        rest, self._head = chunk[self._at :], b""
        if rest and self._sink.feed(rest):
            self._finish()
            return
        self._transport.resume_reading()


def content_length(head: bytes) -> int:
    """The response's Content-Length; without one, as much as an error message shows (or to EOF)."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            return int(value.strip())
    return ERROR_BODY_BYTES


async def open_stream(
    url: str,
    sink: Sink,
    *,
    headers: Mapping[str, str] | None = None,
    pace: Pace | None = None,
    connect_timeout_s: float = 10.0,
) -> SseConnection:
    """Connect, send ``GET`` (with ``headers``, e.g. ``Last-Event-ID``), and return once the 200
    status line and the response headers have arrived; any other status raises ``RuntimeError``."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        raise ValueError(f"only http://host:port/path URLs: {url!r}")
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"GET {path} HTTP/1.1", f"Host: {parts.netloc}", "Accept: text/event-stream"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(connect_timeout_s):
        _, conn = await loop.create_connection(
            lambda: SseConnection(request, url, sink, pace), parts.hostname, parts.port or 80
        )
        try:
            await conn.opened
        except BaseException:
            conn.close()
            raise
    return conn


async def open_all(
    urls: Sequence[str], sinks: Sequence[Sink], paces: Sequence[Pace | None] | None = None
) -> list[SseConnection]:
    """``open_stream`` for each URL at once; if any fails, the others are closed and it raises."""
    paces = paces or [None] * len(urls)
    coros = (open_stream(u, s, pace=p) for u, s, p in zip(urls, sinks, paces, strict=True))
    results = await asyncio.gather(*coros, return_exceptions=True)
    conns = [r for r in results if isinstance(r, SseConnection)]
    for r in results:
        if isinstance(r, BaseException):
            for conn in conns:
                conn.close()
            raise r
    return conns


async def stream_all(urls: Sequence[str], sinks: Sequence[Sink], timeout_s: float) -> float:
    """Follow one stream per sink until every end event; returns this process's CPU seconds from the
    moment all were open (start-up, imports and connecting are not fan-out). Any failure raises."""
    conns = await open_all(urls, sinks)
    cpu = cpu_self_s()
    try:
        async with asyncio.timeout(timeout_s):
            await asyncio.gather(*(c.done for c in conns))
    except TimeoutError:
        left = sum(not c.done.done() for c in conns)
        raise RuntimeError(f"{left} of {len(conns)} streams had no end event after {timeout_s}s") from None
    finally:
        for conn in conns:
            conn.close()
    return cpu_self_s() - cpu
