"""Stream ids as cursors: parsed strictly, compared as integer pairs, never passed through raw."""

from __future__ import annotations

import re

from broker.constants import STREAM_ID_PART_MAX as _MAX

from .errors import bad_request

StreamId = tuple[int, int]
ZERO: StreamId = (0, 0)
MAX_ID: StreamId = (_MAX, _MAX)  # Redis refuses an exclusive bound past it
_ID_RE = re.compile(r"(\d{1,20})(?:-(\d{1,20}))?")


def parse_id(text: str, param: str) -> StreamId:
    """``<ms>-<seq>`` or ``<ms>``; anything else is a 400 naming the parameter."""
    m = _ID_RE.fullmatch(text.strip()) if isinstance(text, str) and text.isascii() else None
    if m is None:
        raise bad_request("invalid_id", f"{param} must be a stream id like 1764345600123-0, got {text!r:.80}")
    ms, seq = int(m.group(1)), int(m.group(2) or 0)
    if ms > _MAX or seq > _MAX:
        raise bad_request("invalid_id", f"{param} is out of range: {text!r:.80}")
    return ms, seq


def format_id(sid: StreamId) -> str:
    return f"{sid[0]}-{sid[1]}"


def from_redis(raw: bytes | str) -> StreamId:
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def predecessor(sid: StreamId) -> StreamId:
    """The id just before ``sid``: a cursor there reads ``sid`` next."""
    ms, seq = sid
    return (ms, seq - 1) if seq else (ms - 1, _MAX)
