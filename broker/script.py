"""The write script: its text, its arguments and its reply, shared by every caller.

Publishers (async and sync) and the gateway's ingest route all write through here, so the
idempotency and line-number rules of docs/design.md §3 exist exactly once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Any

from .codec import pack_batch

WRITE_BATCH_LUA: str = resources.files("broker").joinpath("lua/write_batch.lua").read_text("utf-8")
WRITE_BATCH_SHA: str = hashlib.sha1(WRITE_BATCH_LUA.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Retention:
    """How long a job's data lives: stream cap, idle TTL, TTL once ended (0 disables each)."""

    maxlen: int
    idle_ttl_s: int
    ended_ttl_s: int


@dataclass(frozen=True, slots=True)
class Durability:
    """``replicas`` > 0: a batch counts as delivered only once that many replicas acknowledged it
    (``WAIT`` on the connection that wrote it), so a failover cannot lose a confirmed entry."""

    replicas: int = 0
    timeout_ms: int = 1000


SEQ_REUSED = 1  # a conflict: that seq is stored with other content
SEQ_FRAGMENTED = 2  # a conflict: the src's stored seqs have too many holes to track another


@dataclass(frozen=True, slots=True)
class WriteResult:
    ids: list[str]
    duplicates: int
    refused: int = 0  # not stored: the job had ended before them (docs/design.md §3)
    # not stored: (position in the batch, SEQ_REUSED or SEQ_FRAGMENTED) of each seq conflict
    conflicts: tuple[tuple[int, int], ...] = ()


def write_args(
    job: str,
    keys: tuple[str, str, str, str],
    items: list[bytes],
    retention: Retention,
    job_name: str | None,
    job_type: str | None,
) -> list[Any]:
    """``EVALSHA`` arguments after the sha: numkeys, keys, argv."""
    return [
        len(keys),
        *keys,
        job,
        retention.maxlen,
        retention.idle_ttl_s,
        retention.ended_ttl_s,
        job_name or "",
        job_type or "",
        pack_batch(items),
    ]


def parse_reply(reply: Any) -> WriteResult:
    dups, ids, refused, flat = reply
    conflicts = tuple((int(flat[i]) - 1, int(flat[i + 1])) for i in range(0, len(flat), 2))
    return WriteResult(
        [i.decode() if isinstance(i, bytes) else str(i) for i in ids], int(dups), int(refused), conflicts
    )
