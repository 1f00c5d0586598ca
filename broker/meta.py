"""A job's meta hash (kept by the write script) as typed values.

Per-step and per-worker totals are O(1) counters kept with the data (docs/design.md §10): reading them is
one ``HGETALL``, never a scan of the stream.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .constants import (
    META_COUNT,
    META_CREATED_MS,
    META_END_ID,
    META_ENDED_MS,
    META_ENTRIES,
    META_FIRST,
    META_FIRST_ID,
    META_JOB_ENTRIES,
    META_LAST,
    META_LAST_ID,
    META_MASKED,
    META_NAME,
    META_PUBLISHER,
    META_SEP,
    META_SEQ,
    META_STATUS,
    META_STEP,
    META_TYPE,
    META_UPDATED_MS,
    META_WORKER,
)


@dataclass(slots=True)
class WorkerMeta:
    entries: int = 0
    status: str | None = None


@dataclass(slots=True)
class StepMeta:
    entries: int = 0
    status: str | None = None
    first_id: str | None = None
    last_id: str | None = None
    workers: dict[str, WorkerMeta] = field(default_factory=dict)


@dataclass(slots=True)
class PublisherMeta:
    entries: int = 0
    last_seq: int = 0


@dataclass(slots=True)
class JobMeta:
    job: str
    name: str | None = None
    type: str | None = None
    status: str | None = None
    created_ms: int | None = None
    updated_ms: int | None = None
    ended_ms: int | None = None
    entries: int = 0
    job_entries: int = 0  # entries without a step (job-level lines)
    first_id: str | None = None
    last_id: str | None = None
    end_id: str | None = None  # the end entry, once the job has ended
    masked: int = 0  # secrets masked in the stored entries (docs/design.md §3)
    steps: dict[str, StepMeta] = field(default_factory=dict)
    publishers: dict[str, PublisherMeta] = field(default_factory=dict)


# the meta fields that are JobMeta attributes of the same name
_INTS = {META_CREATED_MS, META_UPDATED_MS, META_ENDED_MS, META_MASKED}
_STRS = {META_NAME, META_TYPE, META_STATUS, META_FIRST_ID, META_LAST_ID, META_END_ID}


def parse_meta(job: str, raw: Mapping[bytes, bytes] | Mapping[str, str]) -> JobMeta | None:
    """``None`` for an empty hash: the job does not exist (or has expired)."""
    if not raw:
        return None
    meta = JobMeta(job)
    for k, v in raw.items():
        key = k.decode("utf-8", "replace") if isinstance(k, bytes) else k
        value = v.decode("utf-8", "replace") if isinstance(v, bytes) else v
        _apply(meta, key, value)
    return meta


def _apply(meta: JobMeta, key: str, value: str) -> None:  # noqa: C901 - one branch per field family
    if key == META_ENTRIES:
        meta.entries = int(value)
    elif key == META_JOB_ENTRIES:
        meta.job_entries = int(value)
    elif key in _INTS:
        setattr(meta, key, int(value))
    elif key in _STRS:
        setattr(meta, key, value)
    elif META_SEP in key:
        tag, name, *rest = key.split(META_SEP)
        if tag == META_STEP:
            step = meta.steps.setdefault(name, StepMeta())
            attr = rest[0]
            if attr == META_COUNT:
                step.entries = int(value)
            elif attr == META_STATUS:
                step.status = value
            elif attr == META_FIRST:
                step.first_id = value
            elif attr == META_LAST:
                step.last_id = value
        elif tag == META_WORKER and len(rest) == 2:
            worker = meta.steps.setdefault(name, StepMeta()).workers.setdefault(rest[0], WorkerMeta())
            if rest[1] == META_COUNT:
                worker.entries = int(value)
            elif rest[1] == META_STATUS:
                worker.status = value
        elif tag == META_PUBLISHER:
            pub = meta.publishers.setdefault(name, PublisherMeta())
            if rest[0] == META_COUNT:
                pub.entries = int(value)
            elif rest[0] == META_SEQ:
                pub.last_seq = int(value)
