"""SSE for tests: ``parse`` reads raw stream bytes as WHATWG says (httpx-sse's decoders; an
event whose data is empty is not dispatched but still sets the last event id), for tests of the
protocol itself; ``follow`` and ``follow_many`` are consumers, on ``broker.client``.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from httpx_sse._decoders import SSEDecoder, SSELineDecoder

from broker.client import LogEntry, Retry, follow_sync


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
    delay_s: float = 0.0,
    delay_for: int = 0,
    disconnect_every: int = 0,
    timeout_s: float = 120.0,
) -> tuple[list[LogEntry], int]:
    """A consumer of a job's stream to its end entry: ``broker.client.follow_sync``, which resumes
    by cursor after errors, trying several base URLs in turn (gateways without a balancer).
    Slow readers sleep ``delay_s`` after each of their first ``delay_for`` entries;
    ``disconnect_every`` entries the consumer hangs up on purpose and follows again from its
    cursor. Returns the entries and the number of connection attempts."""
    got: list[LogEntry] = []
    connections = 0

    def count(error: BaseException, delay_s: float) -> None:
        nonlocal connections
        connections += 1  # the attempt after each failure (a refused connect, a dropped stream)

    cursor: str | None = None
    deadline = time.monotonic() + timeout_s
    retry = Retry(initial_ms=50, max_ms=1000, max_elapsed_s=timeout_s)
    while time.monotonic() < deadline:
        connections += 1
        with follow_sync(base_url, job, after=cursor, retry=retry, on_retry=count) as entries:
            for e in entries:
                got.append(e)
                if delay_s and len(got) <= delay_for:
                    time.sleep(delay_s)
                if disconnect_every and len(got) % disconnect_every == 0 and e.kind != "end":
                    break
            cursor = entries.cursor or None
            if entries.end is not None or entries.past_end:
                return got, connections
    raise TimeoutError(f"no end entry for {job} within {timeout_s}s ({len(got)} entries)")


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
