"""Validation of everything that identifies or describes an entry, at write time.

In the system logbroker replaces, logs landed under the wrong job and a missing step name rendered
as ``<nil>`` (docs/design.md §10.3). Here an entry that cannot be identified is refused before it
is queued, with an :class:`~broker.errors.InvalidEntry` that names the offending field.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from typing import Any, NamedTuple, TypedDict

from .constants import (
    JOB_ID_RE,
    KIND_LOG,
    KIND_STATUS,
    KINDS,
    LEVEL_NAMES,
    LEVELS,
    MAX_FIELDS_DEPTH,
    MAX_NAME_LEN,
    MAX_STATUS_LEN,
)
from .errors import InvalidEntry
from .masking import Masker

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
_STATUS_RE = re.compile(r"[A-Za-z0-9_.-]+")
_INT64_MIN, _UINT64_MAX = -(2**63), 2**64 - 1
_MIN_TS_MS, _MAX_TS_MS = -62_135_596_800_000, 253_402_300_799_999  # 0001-01-01 .. 9999-12-31
# Names repeat endlessly (a worker logs thousands of lines): remember the ones already checked.
_KNOWN_NAMES: set[str] = set()
_KNOWN_NAMES_MAX = 50_000


class Entry(TypedDict):
    """The JSON shape clients receive (docs/design.md §2); every key is always present."""

    id: str
    job: str
    job_name: str | None
    job_type: str | None
    step: str | None
    worker: str | None
    parent: str | None
    line: int
    level: str
    kind: str
    status: str | None
    msg: str
    ts: str
    src: str | None
    seq: int | None
    fields: dict[str, Any] | None


def check_job_id(job: object) -> str:
    if not isinstance(job, str) or JOB_ID_RE.fullmatch(job) is None:
        raise InvalidEntry("job", f"must match [A-Za-z0-9._:-]{{1,128}}, got {job!r:.80}")
    return job


def check_name(field: str, value: object) -> str | None:
    """Step, worker, parent, src, job name/type: 1..256 characters, no control characters."""
    if value is None:
        return None
    if isinstance(value, str) and value in _KNOWN_NAMES:
        return value
    if not isinstance(value, str):
        raise InvalidEntry(field, f"must be a string, got {type(value).__name__}")
    if not value:
        raise InvalidEntry(field, "must not be empty (use null for 'not set')")
    if len(value) > MAX_NAME_LEN:
        raise InvalidEntry(field, f"is {len(value)} characters long, at most {MAX_NAME_LEN} allowed")
    if _CONTROL_RE.search(value):
        raise InvalidEntry(field, "must not contain control characters (newline, tab, NUL...)")
    if _SURROGATE_RE.search(value):
        raise InvalidEntry(field, "must be valid Unicode text (it contains a lone surrogate)")
    if len(_KNOWN_NAMES) >= _KNOWN_NAMES_MAX:
        _KNOWN_NAMES.clear()
    _KNOWN_NAMES.add(value)
    return value


def check_status(value: object) -> str:
    if not isinstance(value, str) or len(value) > MAX_STATUS_LEN or not _STATUS_RE.fullmatch(value):
        raise InvalidEntry("status", f"must match [A-Za-z0-9_.-]{{1,{MAX_STATUS_LEN}}}, got {value!r:.80}")
    return value


def level_number(level: object) -> int:
    """Accepts a level name (any case) or a ``logging`` number, which is rounded down to a known level."""
    if isinstance(level, str):
        number = LEVELS.get(level.lower())
        if number is None:
            raise InvalidEntry("level", f"must be one of {', '.join(LEVELS)}, got {level!r:.40}")
        return number
    if isinstance(level, int) and not isinstance(level, bool):
        if level < 0:
            raise InvalidEntry("level", f"must not be negative, got {level}")
        known = [n for n in LEVEL_NAMES if n <= level]
        return max(known) if known else LEVELS["debug"]
    raise InvalidEntry("level", f"must be a level name or number, got {type(level).__name__}")


def kind_number(kind: object) -> int:
    number = KINDS.get(kind) if isinstance(kind, str) else None
    if number is None:
        raise InvalidEntry("kind", f"must be one of {', '.join(KINDS)}, got {kind!r:.40}")
    return number


def check_identity(step: object, worker: object, parent: object) -> tuple[str | None, str | None, str | None]:
    """A worker always belongs to a step: an entry naming a worker without its step is refused."""
    s = check_name("step", step)
    w = check_name("worker", worker)
    p = check_name("parent", parent)
    if w is not None and s is None:
        raise InvalidEntry("step", f"worker {w!r} needs its step: a worker entry without a step is refused")
    return s, w, p


def as_text(msg: object) -> str:
    """A message as text: bytes are decoded as UTF-8 with replacement characters, so a worker
    printing binary garbage gets a visible ``\ufffd`` rather than an exception."""
    if type(msg) is str:  # one cheap test for nearly every message (a union isinstance is not)
        return msg
    if isinstance(msg, bytes | bytearray | memoryview):
        return bytes(msg).decode("utf-8", "replace")
    if not isinstance(msg, str):
        raise InvalidEntry("msg", f"must be a string, got {type(msg).__name__}")
    return msg


def clip_message(msg: object, max_bytes: int) -> str:
    """Cut an oversized message at a character boundary and say so in the message itself."""
    if type(msg) is not str:
        msg = as_text(msg)
    if len(msg) * 4 <= max_bytes:
        return msg
    raw = msg.encode("utf-8", "surrogatepass")
    if len(raw) <= max_bytes:
        return msg
    marker = f" …[truncated: {len(raw)} bytes, limit {max_bytes}]"
    keep = max(0, max_bytes - len(marker.encode()))
    return raw[:keep].decode("utf-8", "ignore") + marker


def scrub_text(text: str) -> str:
    """Lone surrogates (from ``surrogateescape`` file names, say) become U+FFFD instead of crashing."""
    return _SURROGATE_RE.sub("\ufffd", text)


def check_fields(fields: object) -> dict[str, Any] | None:
    """``fields`` is a JSON object of scalars, lists and objects; tuples become lists.

    Its packed size is limited by the codec (``MAX_FIELDS_BYTES``), which sees the bytes anyway.
    """
    if fields is None:
        return None
    if not isinstance(fields, Mapping):
        raise InvalidEntry("fields", f"must be an object/dict, got {type(fields).__name__}")
    clean = _json_value(fields, "fields", 0)
    assert isinstance(clean, dict)
    return clean


def _json_value(value: object, path: str, depth: int) -> Any:
    if depth > MAX_FIELDS_DEPTH:
        raise InvalidEntry(path, f"nested deeper than {MAX_FIELDS_DEPTH} levels")
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _UINT64_MAX:
            raise InvalidEntry(path, "integer out of the 64-bit range")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidEntry(path, f"{value} is not valid JSON")
        return value
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidEntry(path, f"keys must be strings, got {type(key).__name__}")
            out[key] = _json_value(item, f"{path}.{key}", depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [_json_value(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)]
    raise InvalidEntry(path, f"{type(value).__name__} is not a JSON value")


class Draft(NamedTuple):
    """A validated entry, ready to be packed once its publisher's ``seq`` is known."""

    level: int
    kind: int
    text: str
    step: str | None
    worker: str | None
    parent: str | None
    status: str | None
    fields: dict[str, Any] | None
    job_name: str | None
    job_type: str | None
    ts_ms: int
    masked: int = 0  # values masked in text and fields (``broker.masking``), summed into the job's meta


def make_draft(
    job: str,
    msg: object,
    *,
    level: int,
    kind: int,
    step: object = None,
    worker: object = None,
    parent: object = None,
    status: object = None,
    fields: object = None,
    job_name: object = None,
    job_type: object = None,
    ts_ms: int | None = None,
    max_message_bytes: int,
    masker: Masker | None = None,
) -> Draft:
    """Every check of an entry, and the one place where a status line gets its identification
    (docs/design.md §10.2): whoever writes a status or end entry, publisher or ingest, goes through here.

    With a ``masker``, secrets are masked here, before anything is packed; the message is masked
    before it is clipped, so a clip never leaves half a secret unmasked."""
    s, w, p = check_identity(step, worker, parent)
    name = check_name("job_name", job_name)
    type_ = check_name("job_type", job_type)
    clean_fields = check_fields(fields) if fields is not None else None
    masked = 0
    if masker is not None:
        masked_text, clean_fields, masked = masker.mask(as_text(msg), clean_fields)
        text = clip_message(masked_text, max_message_bytes)
    else:
        text = clip_message(msg, max_message_bytes)
    checked_status = None
    if kind != KIND_LOG:
        checked_status = check_status(status)
        if kind == KIND_STATUS:
            line = status_line(checked_status, job, name, type_, s, w)
        else:
            line = end_line(checked_status, job, name, type_)
        text = f"{line}: {text}" if text else line
    elif status is not None:
        checked_status = check_status(status)
    if ts_ms is None:
        ts_ms = time.time_ns() // 1_000_000
    elif not isinstance(ts_ms, int) or isinstance(ts_ms, bool) or not _MIN_TS_MS <= ts_ms <= _MAX_TS_MS:
        raise InvalidEntry("ts", f"must be milliseconds since 1970 within years 1..9999, got {ts_ms!r:.40}")
    return Draft(level, kind, text, s, w, p, checked_status, clean_fields, name, type_, ts_ms, masked)


def _describe(
    job: str, job_name: str | None, job_type: str | None, step: str | None, worker: str | None
) -> str:
    parts = [f'job: {job} "{job_name}"' if job_name else f"job: {job}"]
    if job_type:
        parts.append(f"type: {job_type}")
    if step:
        parts.append(f"step: {step}")
    if worker:
        parts.append(f"worker: {worker}")
    return ", ".join(parts)


def status_line(
    status: str, job: str, job_name: str | None, job_type: str | None, step: str | None, worker: str | None
) -> str:
    """The identifying status line (docs/design.md §10.2): every status change names its job,
    step and worker."""
    return f"Status changed: {status} ({_describe(job, job_name, job_type, step, worker)})"


def end_line(status: str, job: str, job_name: str | None, job_type: str | None) -> str:
    return f"Job finished: {status} ({_describe(job, job_name, job_type, None, None)})"
