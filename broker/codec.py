"""Pure functions between entries and the bytes stored in Redis.

Stored layout (docs/design.md §3): a stream entry has the fields ``l`` (the per-step line number, assigned
by the write script) and ``b`` (the body: a msgpack array, positions below), plus ``t`` (totals,
packed by the script) on end entries. The job id is the key; the stream id is the entry id.

Body v1: ``[version, ts_ms, level, kind, msg, step, worker, parent, status, job_name, job_type,
src, seq, fields]`` with level and kind as numbers (see ``constants``).
"""

from __future__ import annotations

import functools
import struct
import zlib
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import msgpack

from .constants import (
    BODY_VERSION,
    KIND_END,
    KIND_LOG,
    KIND_NAMES,
    LEVEL_NAMES,
    MAX_FIELDS_BYTES,
    STREAM_FIELD_BODY,
    STREAM_FIELD_LINE,
    STREAM_FIELD_TOTALS,
)
from .entry import Draft, Entry, scrub_text
from .errors import CodecError, InvalidEntry

_BODY_LEN = 14
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_packb = msgpack.Packer(use_bin_type=True, autoreset=True).pack
# The write script reads control tuples with Lua's cmsgpack, which knows the classic raw type best.
_pack_raw = msgpack.Packer(use_bin_type=False, autoreset=True).pack


def pack_body(
    ts_ms: int,
    level: int,
    kind: int,
    msg: str,
    step: str | None,
    worker: str | None,
    parent: str | None,
    status: str | None,
    job_name: str | None,
    job_type: str | None,
    src: str | None,
    seq: int | None,
    fields: dict[str, Any] | None,
) -> bytes:
    body = [BODY_VERSION, ts_ms, level, kind, msg, step, worker, parent, status, job_name, job_type, src, seq]
    body.append(fields)
    try:
        packed: bytes = _packb(body)
    except UnicodeEncodeError:
        packed = _packb(_scrub(body))
    if (
        fields is not None
        and len(packed) > MAX_FIELDS_BYTES
        and len(_packb(_scrub(fields))) > MAX_FIELDS_BYTES
    ):
        raise InvalidEntry("fields", f"packed size exceeds {MAX_FIELDS_BYTES} bytes")
    return packed


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    if isinstance(value, dict):
        return {scrub_text(k): _scrub(v) for k, v in value.items()}
    return value


def pack_control(
    step: str, worker: str, src: str, seq: int, kind: int, status: str, body: bytes, masked: int = 0
) -> bytes:
    """One element of a write batch: what the Lua script needs to route, count and dedupe.

    An entry in which secrets were masked carries a ninth element, how many (the script sums it
    into the job's meta); every other entry keeps the eight, so masking costs them nothing."""
    packed: bytes = _pack_raw([step, worker, src, seq, kind, status, body])
    item = _CONTROL_HEADER + packed[1:] + _packed_fingerprint(body, _TS_AT)
    return _with_masked(item, masked) if masked else item


def _with_masked(item: bytes, masked: int) -> bytes:
    """An eight-element control tuple with the masked count appended as its ninth."""
    count: bytes = _pack_raw(masked)
    return _CONTROL_HEADER_MASKED + item[1:] + count


# The body's time sits at this offset (after the array header and the version); a line's control
# tuple ends with a fingerprint of its body *without* that time: the same entry sent again (a retry,
# or an HTTP ingest retry whose time the gateway filled in) has the same fingerprint, and another
# entry under a seq already stored has (almost surely) another one (docs/design.md §3).
_TS_AT = 2
_INT_SIZES = {0xCC: 2, 0xCD: 3, 0xCE: 5, 0xCF: 9, 0xD0: 2, 0xD1: 3, 0xD2: 5, 0xD3: 9}


def content_fingerprint(body: bytes | memoryview, ts_at: int = _TS_AT) -> bytes:
    """CRC-32 (4 bytes) of a packed body, its ``ts_ms`` (at ``ts_at``) left out."""
    after_ts = ts_at + _INT_SIZES.get(body[ts_at], 1)  # fixints (positive or negative) are one byte
    return zlib.crc32(memoryview(body)[after_ts:]).to_bytes(4, "big")


_crc32 = zlib.crc32
_pack_print = struct.Struct(">BI").pack  # a fingerprint as the fixstr of 4 bytes (0xa4) it is sent as


def _packed_fingerprint(body: bytes | memoryview, ts_at: int) -> bytes:
    """The fingerprint as the msgpack str of 4 bytes the script compares (cmsgpack reads raw)."""
    return b"\xa4" + content_fingerprint(body, ts_at)


def pack_item(d: Draft, src: str | None, seq: int | None) -> bytes:
    """A draft as one element of a write batch (its body nested inside)."""
    body = pack_body(d.ts_ms, d.level, d.kind, d.text, d.step, d.worker, d.parent, d.status, d.job_name,
                     d.job_type, src, seq, d.fields)  # fmt: skip
    return pack_control(
        d.step or "", d.worker or "", src or "", seq or 0, d.kind, d.status or "", body, d.masked
    )


class LinePacker:
    """``pack_item`` for the log lines of one handle, with what never changes packed once.

    A worker's lines differ only in time, level, message, seq and fields; step, worker, parent,
    job name/type and src are the same every time. Packing those once per handle, and the rest
    with two or three packer calls into the exact bytes ``pack_item`` makes, was the larger half
    of what a line cost a publishing process (issue 7). Anything unusual (text with lone
    surrogates) takes ``pack_item`` itself, so the bytes never differ.
    """

    __slots__ = ("_body_mid", "_control_head", "_identity", "src")

    def __init__(
        self,
        src: str,
        step: str | None,
        worker: str | None,
        parent: str | None,
        job_name: str | None,
        job_type: str | None,
    ) -> None:
        self.src = src
        self._identity = (step, worker, parent, job_name, job_type)
        # body positions 5..11 (status is None on a log line), and the control tuple's first three
        self._body_mid = _packb([step, worker, parent, None, job_name, job_type, src])[1:]
        self._control_head = _CONTROL_HEADER + _pack_raw([step or "", worker or "", src])[1:]

    def pack(
        self, ts_ms: int, level: int, text: str, seq: int, fields: dict[str, Any] | None, masked: int = 0
    ) -> bytes:
        if masked:
            return _with_masked(self.pack(ts_ms, level, text, seq, fields), masked)
        try:
            head = _packb([BODY_VERSION, ts_ms, level, KIND_LOG, text])
            tail = b"\xc0" if fields is None else _packb(fields)
        except UnicodeEncodeError:
            return self._generic(ts_ms, level, text, seq, fields)
        if len(tail) > MAX_FIELDS_BYTES:
            raise InvalidEntry("fields", f"packed size exceeds {MAX_FIELDS_BYTES} bytes")
        packed_seq = _packb(seq)
        size = len(head) + len(self._body_mid) + len(packed_seq) + len(tail)
        # every ordinary line is 32 bytes to 64 KiB: its header inline, a call per line saved
        body_header = b"\xda" + size.to_bytes(2, "big") if 32 <= size < 0x10000 else _raw_header(size)
        # content_fingerprint(body), from the parts: the body after its time is head[after_ts:]
        # (same offsets: _BODY_HEADER stands where head's array header was), then the rest
        crc = _crc32(head[_TS_AT + _INT_SIZES.get(head[_TS_AT], 1) :])
        crc = _crc32(tail, _crc32(packed_seq, _crc32(self._body_mid, crc)))
        return b"".join((self._control_head, packed_seq, _LOG_CONTROL_MIDDLE, body_header, _BODY_HEADER,
                         head[1:], self._body_mid, packed_seq, tail, _pack_print(0xA4, crc)))  # fmt: skip

    def _generic(self, ts_ms: int, level: int, text: str, seq: int, fields: dict[str, Any] | None) -> bytes:
        step, worker, parent, job_name, job_type = self._identity
        draft = Draft(level, KIND_LOG, text, step, worker, parent, None, fields, job_name, job_type, ts_ms)
        return pack_item(draft, self.src, seq)


def _raw_header(n: int) -> bytes:
    """The header ``use_bin_type=False`` gives bytes of length ``n`` (the control tuple's body)."""
    if n < 32:
        return bytes((0xA0 | n,))
    if n < 0x10000:
        return b"\xda" + n.to_bytes(2, "big")
    return b"\xdb" + n.to_bytes(4, "big")


_CONTROL_HEADER = b"\x98"  # [step, worker, src, seq, kind, status, body, fingerprint]
_CONTROL_HEADER_MASKED = b"\x99"  # ... and the number of values masked in the entry
_BODY_HEADER = bytes((0x90 | _BODY_LEN,))
_LOG_CONTROL_MIDDLE = _pack_raw(KIND_LOG) + _pack_raw("")  # kind, status of a log line


def pack_batch(items: list[bytes]) -> bytes:
    """A msgpack array made of already packed elements, without re-packing them."""
    n = len(items)
    if n < 16:
        header = bytes((0x90 | n,))
    elif n < 0x10000:
        header = b"\xdc" + n.to_bytes(2, "big")
    else:
        header = b"\xdd" + n.to_bytes(4, "big")
    return header + b"".join(items)


def ms_to_iso(ts_ms: int) -> str:
    return f"{_second_to_iso(ts_ms // 1000)}.{ts_ms % 1000:03d}Z"


@functools.lru_cache(maxsize=4096)
def _second_to_iso(second: int) -> str:
    """Entries come in bursts within the same second: format each second once (a hot path)."""
    dt = _EPOCH + timedelta(seconds=second)
    return f"{dt.year:04d}-{dt:%m-%dT%H:%M:%S}"  # %Y does not pad years < 1000


def iso_to_ms(text: str) -> int:
    """Parse an ISO-8601 timestamp; one without a zone is taken as UTC."""
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except (ValueError, AttributeError) as e:
        raise InvalidEntry("ts", f"not an ISO-8601 timestamp: {text!r:.60}") from e
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    delta = dt - _EPOCH  # integer arithmetic: a float timestamp would lose a millisecond now and then
    return delta.days * 86_400_000 + delta.seconds * 1000 + delta.microseconds // 1000


def unpack_body(raw: bytes) -> list[Any]:
    try:
        body = msgpack.unpackb(raw, raw=False, unicode_errors="replace", strict_map_key=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
        raise CodecError(f"entry body is not msgpack: {e}") from e
    if not isinstance(body, list) or len(body) < _BODY_LEN or body[0] != BODY_VERSION:
        raise CodecError("entry body has an unknown layout")
    return body


def unpack_totals(raw: bytes) -> dict[str, Any]:
    """Totals packed by Lua: empty Lua tables arrive as empty arrays, so normalise them to objects."""
    try:
        totals = msgpack.unpackb(raw, raw=False, unicode_errors="replace", strict_map_key=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
        raise CodecError(f"end totals are not msgpack: {e}") from e
    if not isinstance(totals, dict):
        raise CodecError("end totals are not a map")
    for key in ("steps", "workers", "publishers"):
        if not totals.get(key):
            totals[key] = {}
    for step, workers in list(totals["workers"].items()):
        if not workers:
            totals["workers"][step] = {}
    return totals


def decode_entry(job: str, entry_id: str, fields: Mapping[bytes, bytes]) -> Entry:
    """A stored stream entry as the JSON-ready dict of docs/design.md §2."""
    try:
        raw_body = fields[STREAM_FIELD_BODY]
        line = int(fields[STREAM_FIELD_LINE])
    except (KeyError, ValueError) as e:
        raise CodecError(f"stream entry {entry_id} lacks its line or body") from e
    b = unpack_body(raw_body)
    try:
        return _entry(job, entry_id, line, b, fields)
    except (TypeError, ValueError, OverflowError, AttributeError) as e:
        raise CodecError(f"stream entry {entry_id} has a malformed body: {e}") from e


def _entry(job: str, entry_id: str, line: int, b: list[Any], fields: Mapping[bytes, bytes]) -> Entry:
    extra = b[13]
    kind = b[3]
    if kind == KIND_END and STREAM_FIELD_TOTALS in fields:
        extra = dict(extra or {})
        extra["totals"] = unpack_totals(fields[STREAM_FIELD_TOTALS])
    for position in (4, 5, 6, 7, 8, 9, 10, 11):
        if b[position] is not None and not isinstance(b[position], str):
            raise TypeError(f"body position {position} is not text")
    if not isinstance(b[1], int) or not (b[12] is None or isinstance(b[12], int)):
        raise TypeError("ts or seq is not an integer")
    if extra is not None and not isinstance(extra, dict):
        raise TypeError("fields is not a map")
    return {
        "id": entry_id,
        "job": job,
        "job_name": b[9],
        "job_type": b[10],
        "step": b[5],
        "worker": b[6],
        "parent": b[7],
        "line": line,
        "level": LEVEL_NAMES.get(b[2], "info"),
        "kind": KIND_NAMES.get(kind, "log"),
        "status": b[8],
        "msg": b[4] if b[4] is not None else "",
        "ts": ms_to_iso(b[1]),
        "src": b[11],
        "seq": b[12],
        "fields": extra,
    }
