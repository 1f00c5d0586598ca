"""Every Redis key part, stored field name and default number of logbroker, in one place.

Units are in the names (``_ms``, ``_s``, ``_bytes``) so a reader never has to guess. The write
script (``lua/write_batch.lua``) cannot import this module: it spells the same stream and meta
field names, and ``tests/broker/test_constants.py`` checks that it spells every one of them.
"""

from __future__ import annotations

import re
from typing import Final

# --- Identity rules (validated at write time; anything else never becomes a Redis key) ---
JOB_ID_RE: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")
MAX_JOB_ID_LEN: Final = 128
MAX_NAME_LEN: Final = 256  # step, worker, parent, src, job_name, job_type
MAX_STATUS_LEN: Final = 64
MAX_FIELDS_DEPTH: Final = 16
MAX_FIELDS_BYTES: Final = 64 * 1024

# --- Levels and kinds: names are the JSON contract, numbers are what we store ---
LEVELS: Final[dict[str, int]] = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
LEVEL_NAMES: Final[dict[int, str]] = {v: k for k, v in LEVELS.items()}
KIND_LOG: Final = 0
KIND_STATUS: Final = 1
KIND_END: Final = 2
KINDS: Final[dict[str, int]] = {"log": KIND_LOG, "status": KIND_STATUS, "end": KIND_END}
KIND_NAMES: Final[dict[int, str]] = {v: k for k, v in KINDS.items()}

# --- Media types of the HTTP API (docs/design.md §5) ---
JSON: Final = "application/json"
NDJSON: Final = "application/x-ndjson"  # one entry per line: ingest bodies and replay downloads

# --- Redis layout (docs/design.md §3) ---
DEFAULT_KEY_PREFIX: Final = "logbroker"
DEFAULT_PARTITIONS: Final = 16
STREAM_FIELD_LINE: Final = b"l"
STREAM_FIELD_BODY: Final = b"b"
STREAM_FIELD_TOTALS: Final = b"t"  # only on end entries: per-step/worker/publisher totals, packed by Lua
BODY_VERSION: Final = 1
# Separator inside meta field names; control characters are forbidden in names, so it is unambiguous.
META_SEP: Final = "\x1f"
STREAM_ID_PART_MAX: Final = 2**64 - 1  # each of a stream id's two numbers (<ms>-<seq>)
MAX_SEQ: Final = 2**53 - 1  # the write script compares seqs as Lua numbers (doubles): exact up to 2**53

# --- The meta hash of a job (docs/design.md §3), kept by the write script ---
META_ENTRIES: Final = "n"  # every entry of the job
META_JOB_ENTRIES: Final = "jn"  # entries without a step (job-level lines; also their line counter)
META_NAME: Final = "name"
META_TYPE: Final = "type"
META_STATUS: Final = "status"
META_CREATED_MS: Final = "created_ms"
META_UPDATED_MS: Final = "updated_ms"
META_ENDED_MS: Final = "ended_ms"
META_FIRST_ID: Final = "first_id"  # the job's first entry ever: a gap shows when it was trimmed
META_LAST_ID: Final = "last_id"
META_END_ID: Final = "end_id"  # the end entry: a stream past it answers 204
META_MASKED: Final = "masked"  # secrets masked in the job's stored entries (broker.masking)
# Per step, worker and publisher: ``<tag>SEP<name>SEP<attribute>`` (a worker's name is
# ``<step>SEP<worker>``); e.g. ``s\x1fbuild\x1fn`` is step build's entry count (and line counter).
META_STEP: Final = "s"
META_WORKER: Final = "w"
META_PUBLISHER: Final = "p"
META_COUNT: Final = "n"
META_FIRST: Final = "first"
META_LAST: Final = "last"
META_SEQ: Final = "seq"  # a publisher's last stored seq

# --- Retention (docs/design.md §3) ---
DEFAULT_STREAM_MAXLEN: Final = 1_000_000
DEFAULT_ENDED_TTL_S: Final = 7 * 24 * 3600
DEFAULT_IDLE_TTL_S: Final = 30 * 24 * 3600

# --- Publisher (docs/design.md §4) ---
DEFAULT_MAX_MESSAGE_BYTES: Final = 64 * 1024
DEFAULT_MAX_BATCH_ENTRIES: Final = 1000
DEFAULT_MAX_BATCH_BYTES: Final = 1024 * 1024
DEFAULT_LINGER_MS: Final = 0  # no artificial delay: batches form while the previous write is in flight
DEFAULT_MAX_BUFFER_ENTRIES: Final = 100_000
DEFAULT_MAX_BUFFER_BYTES: Final = 64 * 1024 * 1024
DEFAULT_FLUSH_TIMEOUT_S: Final = 30.0
EXIT_FLUSH_TIMEOUT_S: Final = 10.0  # an open sync publisher delivers what it holds at process exit
DEFAULT_SOCKET_TIMEOUT_S: Final = 10.0
DEFAULT_CONNECT_TIMEOUT_S: Final = 2.0
CONNECT_ATTEMPTS: Final = 5  # at start (publishers and gateways): then the error, loudly
BACKOFF_INITIAL_MS: Final = 50
BACKOFF_MAX_MS: Final = 2000
OVERFLOW_BLOCK: Final = "block"
OVERFLOW_DROP_NEW: Final = "drop_new"
OVERFLOW_DROP_OLDEST: Final = "drop_oldest"
OVERFLOW_POLICIES: Final = (OVERFLOW_BLOCK, OVERFLOW_DROP_NEW, OVERFLOW_DROP_OLDEST)
