"""An entry as the one line of JSON the gateway sends (SSE ``data:``, replay pages, NDJSON).

It lives in the gateway, not in ``broker``, because only the gateway writes entry JSON and
orjson is a gateway dependency: a worker that only publishes installs neither (docs/design.md
§11). Python's ``json`` is no drop-in fallback: it spells some floats differently (``1e-07``
where orjson writes ``1e-7``), so the bytes on the wire would depend on what is installed.
"""

from __future__ import annotations

import json

import orjson

from broker.entry import Entry


def entry_json(entry: Entry) -> str:
    """One line of JSON: control characters are escaped, so it is safe as one SSE ``data:`` line.
    So are U+2028, U+2029 and U+0085: clients that split lines as ``str.splitlines`` does (httpx
    ``iter_lines``) would otherwise end a ``data:`` line inside a message and could be fed a
    forged event."""
    return entry_json_bytes(entry).decode()


def entry_json_bytes(entry: Entry) -> bytes:
    """``entry_json`` as UTF-8, the form the gateway sends. orjson writes compact JSON with the
    same values as ``json.dumps(..., ensure_ascii=False)`` and is about 15x faster (this runs
    once per entry in the gateway and once per entry replayed); what it refuses (ints beyond 64
    bits, a surrogate in a string) goes through ``json.dumps`` (ASCII)."""
    try:
        return _escape_line_breaks(orjson.dumps(entry))
    except TypeError:  # ASCII escapes: a lone surrogate has no UTF-8 form
        return json.dumps(entry, separators=(",", ":")).encode()


# UTF-8 of the characters ``str.splitlines`` ends a line at that JSON leaves unescaped; each can
# only stand inside a JSON string (the rest of the syntax is ASCII), where its escape means the same
_LINE_BREAKS = ((b"\xe2\x80\xa8", b"\\u2028"), (b"\xe2\x80\xa9", b"\\u2029"), (b"\xc2\x85", b"\\u0085"))


def _escape_line_breaks(data: bytes) -> bytes:
    for raw, escaped in _LINE_BREAKS:
        if raw in data:
            data = data.replace(raw, escaped)
    return data
