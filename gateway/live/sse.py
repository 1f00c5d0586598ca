"""Server-Sent Events framing (WHATWG HTML §9.2), built as bytes once per entry.

``data`` is always one line of JSON: ``json.dumps`` escapes CR and LF, the only characters that
end an SSE line, so nothing inside a message, step, worker or field can end an event early or
inject one. An event with only an ``id:`` line moves the client's Last-Event-ID without
dispatching anything: that is how filtered-out entries still advance the cursor.
"""

from __future__ import annotations

HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
    "Connection": "keep-alive",
}


def event(entry_id: str, data: str, name: str | None = None) -> bytes:
    if "\n" in data or "\r" in data:  # never true for json.dumps output; a guard for future callers
        raise ValueError("SSE data must be a single line")
    head = f"event: {name}\n" if name else ""
    return f"{head}id: {entry_id}\ndata: {data}\n\n".encode()


def event_bytes(entry_id: str, data: bytes, name: str | None = None) -> bytes:
    """``event`` for data that is already UTF-8 (one per entry: no str round trip)."""
    if b"\n" in data or b"\r" in data:
        raise ValueError("SSE data must be a single line")
    head = f"event: {name}\nid: {entry_id}\ndata: " if name else f"id: {entry_id}\ndata: "
    return b"%b%b\n\n" % (head.encode(), data)


def id_only(entry_id: str) -> bytes:
    return f"id: {entry_id}\n\n".encode()


def retry(ms: int) -> bytes:
    return f"retry: {ms}\n\n".encode()


def comment(text: str) -> bytes:
    return (": " + text.replace("\r", " ").replace("\n", " ") + "\n\n").encode()
