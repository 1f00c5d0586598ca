"""A WHATWG-conformant SSE reader for tests (httpx + httpx-sse's line decoder).

Per the spec, an event whose data is empty is not dispatched but still sets the last event id;
``read_events`` follows that rule, and ``follow`` reconnects with ``Last-Event-ID`` like a
browser's EventSource until the job's end event.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from httpx_sse._decoders import SSEDecoder, SSELineDecoder


@dataclass
class Event:
    event: str
    id: str
    data: str

    def json(self) -> Any:
        return json.loads(self.data)


@dataclass
class Parsed:
    events: list[Event] = field(default_factory=list)
    last_id: str = ""
    retry: int | None = None
    comments: int = 0


def parse(raw: bytes) -> Parsed:
    out = Parsed()
    lines, decoder = SSELineDecoder(), SSEDecoder()
    for line in [*lines.decode(raw.decode("utf-8")), *lines.flush(), ""]:
        _feed(out, decoder, line)
    return out


def _feed(out: Parsed, decoder: SSEDecoder, line: str) -> Event | None:
    if line.startswith(":"):
        out.comments += 1
    sse = decoder.decode(line)
    if sse is None:
        return None
    out.last_id = sse.id
    if sse.retry is not None:
        out.retry = sse.retry
    if not sse.data:
        return None
    event = Event(sse.event or "message", sse.id, sse.data)
    out.events.append(event)
    return event


def follow(
    base_url: str | list[str],
    job: str,
    *,
    query: str = "",
    last_id: str = "",
    delay_s: float = 0.0,
    delay_for: int = 0,
    disconnect_every: int = 0,
    timeout_s: float = 120.0,
) -> tuple[list[Event], int]:
    """Read a job's stream until its end event, reconnecting after errors or on purpose every
    ``disconnect_every`` events. Slow readers sleep ``delay_s`` after each of their first
    ``delay_for`` events. Several base URLs are tried in turn after an error (gateways behind a
    balancer). Returns the dispatched events and the number of connections made."""
    bases = [base_url] if isinstance(base_url, str) else base_url
    got: list[Event] = []
    connections = failures = 0
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        connections += 1
        headers = {"Last-Event-ID": last_id} if last_id else {}
        try:
            with httpx.stream(
                "GET",
                f"{bases[failures % len(bases)]}/v1/jobs/{job}/stream?{query}",
                headers=headers,
                timeout=30,
            ) as r:
                if r.status_code == 204:
                    return got, connections
                r.raise_for_status()
                out, lines, decoder = Parsed(), SSELineDecoder(), SSEDecoder()
                for chunk in r.iter_text():
                    for line in lines.decode(chunk):
                        event = _feed(out, decoder, line)
                        last_id = out.last_id or last_id
                        if event is None:
                            continue
                        got.append(event)
                        if event.event == "end":
                            return got, connections
                        if delay_s and len(got) <= delay_for:
                            time.sleep(delay_s)
                        if disconnect_every and len(got) % disconnect_every == 0:
                            raise ConnectionAbortedError("disconnecting on purpose")
        except httpx.HTTPError:
            failures += 1  # try the next gateway
            time.sleep(0.05)
        except ConnectionAbortedError:
            time.sleep(0.05)
    raise TimeoutError(f"no end event for {job} within {timeout_s}s ({len(got)} events)")


def follow_many(args: tuple[str | list[str], str, int]) -> list[tuple[list[str], int]]:
    """``n`` concurrent clients in one process (threads), so 50 clients need only a few processes.
    Module-level, so a ``spawn`` pool can run it. Returns (event ids, connections) per client."""
    base, job, n = args
    results: list[tuple[list[str], int]] = [([], 0) for _ in range(n)]

    def one(i: int) -> None:
        events, connections = follow(base, job, timeout_s=120)
        results[i] = ([e.id for e in events], connections)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def dechunk(body: bytes) -> bytes:
    """An HTTP/1.1 chunked body, unframed; every chunk must be framed exactly."""
    out = b""
    while True:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return out
        out += rest[:size]
        assert rest[size : size + 2] == b"\r\n", "every chunk is framed exactly"
        body = rest[size + 2 :]
