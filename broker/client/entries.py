"""What a consumer gets: typed entries (docs/design.md §2) and the markers for lost data.

``ts`` stays the string the gateway sent (UTC, milliseconds, ``Z``): lossless, cheap, and what
``to_dict()`` gives back; :attr:`LogEntry.datetime` parses it when a ``datetime`` is wanted.
``fields`` is the entry's dict as sent, ``None`` when it has none (§2 keeps the two apart).
Keys a newer gateway adds are ignored, a missing or mistyped one is a :class:`ProtocolError`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .errors import ProtocolError

_STR = (str,)
_OPT_STR = (str, type(None))
_INT = (int,)
_OPT_INT = (int, type(None))
# §2's keys in their order, with the JSON types each may have
_SCHEMA: dict[str, tuple[type, ...]] = {
    "id": _STR, "job": _STR, "job_name": _OPT_STR, "job_type": _OPT_STR, "step": _OPT_STR,
    "worker": _OPT_STR, "parent": _OPT_STR, "line": _INT, "level": _STR, "kind": _STR,
    "status": _OPT_STR, "msg": _STR, "ts": _STR, "src": _OPT_STR, "seq": _OPT_INT,
    "fields": (dict, type(None)),
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One stored entry, every key of docs/design.md §2 as an attribute."""

    id: str
    job: str
    job_name: str | None
    job_type: str | None
    step: str | None
    worker: str | None
    parent: str | None
    line: int
    level: str
    kind: str  # log, status or end
    status: str | None
    msg: str
    ts: str  # YYYY-MM-DDTHH:MM:SS.mmmZ, as sent
    src: str | None
    seq: int | None
    fields: dict[str, Any] | None

    @property
    def datetime(self) -> datetime:
        """``ts`` as an aware UTC datetime."""
        return datetime.fromisoformat(self.ts)

    @property
    def totals(self) -> dict[str, Any] | None:
        """The end entry's totals (§2: entries, job, steps, workers, publishers); None otherwise."""
        if self.kind != "end" or self.fields is None:
            return None
        totals = self.fields.get("totals")
        return totals if isinstance(totals, dict) else None

    def to_dict(self) -> dict[str, Any]:
        """The entry as the gateway sent it (§2 key order), e.g. to print it as JSON again."""
        return {key: getattr(self, key) for key in _SCHEMA}


@dataclass(frozen=True, slots=True)
class Gap:
    """Retention trimmed the entries after ``after``; ``first_available`` is the oldest kept (§5)."""

    after: str
    first_available: str
    reason: str


@dataclass(frozen=True, slots=True)
class Reset:
    """The job's data was lost (``reason`` ``data_lost``: Redis came back empty). What follows is
    the job from its new beginning, ``first_available`` (None: nothing stored yet); discard what
    was read of it before ``after``."""

    after: str
    first_available: str | None
    reason: str


Marker = Gap | Reset


def parse_json(data: str | bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except ValueError as e:
        raise ProtocolError(f"{what} is not JSON: {str(data)[:200]!r}") from e


def entry_of(obj: object) -> LogEntry:
    if not isinstance(obj, dict):
        raise ProtocolError(f"an entry must be a JSON object, got {str(obj)[:200]!r}")
    for key, types in _SCHEMA.items():
        value = obj.get(key, ...)
        if value is ... or not isinstance(value, types) or isinstance(value, bool):
            raise ProtocolError(f"entry {str(obj.get('id'))[:40]!r}: {key} is missing or mistyped")
    return LogEntry(**{key: obj[key] for key in _SCHEMA})


def gap_of(obj: object) -> Gap:
    d = _marker_fields(obj, "gap")
    if not isinstance(d["first_available"], str):
        raise ProtocolError(f"a gap names its first_available entry, got {str(obj)[:200]!r}")
    return Gap(d["after"], d["first_available"], d["reason"])


def reset_of(obj: object) -> Reset:
    d = _marker_fields(obj, "reset")
    return Reset(d["after"], d["first_available"], d["reason"])


def _marker_fields(obj: object, what: str) -> dict[str, Any]:
    if (
        not isinstance(obj, dict)
        or not isinstance(obj.get("after"), str)
        or not isinstance(obj.get("reason"), str)
        or not isinstance(obj.get("first_available", ...), str | None)
    ):
        raise ProtocolError(f"a {what} is {{after, first_available, reason}}, got {str(obj)[:200]!r}")
    return obj
