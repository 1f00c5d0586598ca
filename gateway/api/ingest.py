"""``POST /v1/jobs/{job}/logs``: ingest for workers that are not Python (docs/design.md §5).

Body: a JSON array of entry objects, or NDJSON (``Content-Type: application/x-ndjson``), one object
per line. Answer: ``200 {"accepted": n, "duplicates": m, "ids": [<stream ids stored>]}``.

Why it is built this way:

* The whole request is validated (and packed) before anything is written, with the same
  ``make_draft`` the publishers use, so one bad entry is a 400 naming its index with nothing
  stored, and every status line gets its identification here too (docs/design.md §10).
* Writes go through the one write script, in batches of at most ``_MAX_BATCH_ENTRIES`` entries
  and ``DEFAULT_MAX_BATCH_BYTES``, **one after another, stopping at the first failure**: what is
  stored is always a prefix of the request, in order.
* Idempotency is the publishers': ``src`` + ``seq`` (both or neither, seq increasing per src). A
  client that gets a 503 ``redis_unavailable`` (or loses the answer) **must retry the same request
  with the same src/seq**: the prefix already stored comes back as ``duplicates`` and the rest is
  written. Entries without src/seq carry no idempotency: retrying them may store them twice.
* A seq is a duplicate only if it was stored, with the same content: a seq stored with other
  content (another writer under the same src) is not stored and the answer is ``409
  seq_conflict`` naming it, after the rest of the request was written (conflicts are per entry
  and the same on every retry, so stopping at one would block the rest for good).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any

import redis
from aiohttp import web
from prometheus_client import Counter

from broker.codec import iso_to_ms, pack_item
from broker.constants import DEFAULT_MAX_BATCH_BYTES, JSON, MAX_SEQ, NDJSON
from broker.delivery import write_async
from broker.entry import Draft, check_name, kind_number, level_number, make_draft
from broker.errors import InvalidEntry
from broker.outbox import Batch
from broker.script import SEQ_REUSED

from ..errors import ApiError, bad_request, redis_failure
from ..metrics import Metrics
from ..settings import GatewaySettings
from .body import read_body
from .params import job_of
from .state import GATEWAY, Gateway

log = logging.getLogger(__name__)

KEYS = frozenset(
    {"msg", "level", "step", "worker", "parent", "kind", "status", "fields", "job_name", "job_type", "ts"}
    | {"src", "seq"}  # idempotency
)
_MAX_BATCH_ENTRIES = 1000
_THREAD_BODY_BYTES = 256 * 1024  # parse bigger bodies in a thread, so SSE clients are not held up


@dataclass(frozen=True, slots=True)
class Parsed:
    """One validated entry: its draft, its idempotency key and the packed write item."""

    draft: Draft
    src: str | None
    seq: int | None
    item: bytes


async def counted(requests: Counter, answer: Awaitable[web.Response]) -> web.Response:
    """``answer``, counted by its status in ``requests`` (errors raised as responses included)."""
    status = 500
    try:
        response = await answer
        status = response.status
        return response
    except (ApiError, web.HTTPException) as e:
        status = e.status
        raise
    finally:
        requests.labels(status=str(status)).inc()


async def post_logs(request: web.Request) -> web.Response:
    """Validate everything, then write; see the module docstring for retry semantics."""
    gw = request.app[GATEWAY]
    return await counted(gw.metrics.ingest_requests, _ingest(gw, request))


async def _ingest(gw: Gateway, request: web.Request) -> web.Response:
    job = job_of(request)
    ndjson = _is_ndjson(request)
    body = await read_body(request, gw.settings.max_body_bytes)
    if len(body) > _THREAD_BODY_BYTES:
        parsed = await asyncio.to_thread(prepare, gw.settings, gw.metrics, job, body, ndjson)
    else:
        parsed = prepare(gw.settings, gw.metrics, job, body, ndjson)
    ids, duplicates = await _write(gw, job, _batches(gw, job, parsed))
    return web.json_response({"accepted": len(ids), "duplicates": duplicates, "ids": ids})


def _is_ndjson(request: web.Request) -> bool:
    ctype = request.content_type
    if ctype not in (JSON, NDJSON):
        got = request.headers.get("Content-Type", "")
        message = f"Content-Type must be {JSON} or {NDJSON}, got {got!r:.80}"
        raise ApiError(415, "unsupported_media_type", message)
    charset = request.charset
    if charset is not None and charset.lower() not in ("utf-8", "utf8"):
        raise ApiError(415, "unsupported_media_type", f"the body must be UTF-8, got charset {charset!r:.40}")
    return ctype == NDJSON


def prepare(settings: GatewaySettings, metrics: Metrics, job: str, body: bytes, ndjson: bool) -> list[Parsed]:
    """Decode, parse and validate the whole body; raises ``ApiError`` before anything is written."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise bad_request("invalid_encoding", f"the body is not UTF-8: byte {e.start} is invalid") from None
    objects = _parse_ndjson(text, settings) if ndjson else _parse_array(text, settings)
    try:
        return _validate(settings, job, objects)
    except ApiError:
        metrics.ingest_entries.labels(result="rejected").inc(len(objects))
        raise


def _loads(text: str) -> Any:
    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    return json.loads(text, parse_constant=constant)


def _parse_array(text: str, settings: GatewaySettings) -> list[tuple[str, object]]:
    if not text.strip():
        raise bad_request("empty_body", "the body holds no entries")
    try:
        value = _loads(text)
    except (ValueError, RecursionError) as e:
        raise bad_request("invalid_json", f"the body is not valid JSON: {e}") from None
    if not isinstance(value, list):
        raise bad_request(
            "invalid_body", f"the body must be a JSON array of entries, got {type(value).__name__}"
        )
    if not value:
        raise bad_request("empty_body", "the body is an empty array: no entries")
    _check_count(len(value), settings)
    return [(f"entry {i}", obj) for i, obj in enumerate(value)]


def _parse_ndjson(text: str, settings: GatewaySettings) -> list[tuple[str, object]]:
    objects: list[tuple[str, object]] = []
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        _check_count(len(objects) + 1, settings)
        try:
            value = _loads(line)
        except (ValueError, RecursionError) as e:
            raise bad_request("invalid_json", f"line {number} is not valid JSON: {e}") from None
        objects.append((f"entry {len(objects)} (line {number})", value))
    if not objects:
        raise bad_request("empty_body", "the body holds no entries")
    return objects


def _check_count(count: int, settings: GatewaySettings) -> None:
    if count > settings.max_ingest_entries:
        message = f"at most {settings.max_ingest_entries} entries per request: split the body"
        raise ApiError(413, "too_many_entries", message)


def _validate(settings: GatewaySettings, job: str, objects: list[tuple[str, object]]) -> list[Parsed]:
    """Every entry, or a 400 naming the first bad one; seqs must increase per src, as the write
    script would otherwise drop a lower one as already stored."""
    parsed: list[Parsed] = []
    last_seq: dict[str, int] = {}
    for label, obj in objects:
        try:
            entry = entry_of(settings, job, obj)
            if entry.src is not None and entry.seq is not None:
                previous = last_seq.get(entry.src, 0)
                if entry.seq <= previous:
                    raise InvalidEntry("seq", f"must increase per src: {entry.seq} after {previous}")
                last_seq[entry.src] = entry.seq
        except InvalidEntry as e:
            raise bad_request("invalid_entry", f"{label}: {e}") from None
        parsed.append(entry)
    return parsed


def entry_of(settings: GatewaySettings, job: str, obj: object) -> Parsed:
    """One entry object, checked, masked and packed (packing checks the size of ``fields``)."""
    if not isinstance(obj, Mapping):
        raise InvalidEntry("entry", f"must be a JSON object, got {type(obj).__name__}")
    unknown = sorted(k for k in obj if k not in KEYS)
    if unknown:
        raise InvalidEntry(f"{unknown[0]!r:.60}", f"unknown key (allowed: {', '.join(sorted(KEYS))})")
    if "msg" not in obj:
        raise InvalidEntry("msg", "is required")
    level, kind, ts = obj.get("level"), obj.get("kind"), obj.get("ts")
    return parsed_entry(
        settings, job, obj["msg"], level=level_number("info" if level is None else level),
        kind=kind_number("log" if kind is None else kind), step=obj.get("step"), worker=obj.get("worker"),
        parent=obj.get("parent"), status=obj.get("status"), fields=obj.get("fields"),
        job_name=obj.get("job_name"), job_type=obj.get("job_type"), ts_ms=_ts_ms(ts),
        src=obj.get("src"), seq=obj.get("seq"),
    )  # fmt: skip


def parsed_entry(
    settings: GatewaySettings,
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
    src: object = None,
    seq: object = None,
) -> Parsed:
    """The one way an HTTP write path (this JSON ingest, and OTLP in ``gateway.api.otlp``) makes
    an entry: checked by ``make_draft`` like a publisher's, with the gateway's message limit and
    its secret masking (``LOGBROKER_MASK_PATTERNS`` and the built-in credential formats,
    docs/design.md §2), so no route can store an unmasked entry; then packed."""
    checked_src, checked_seq = _source(src, seq)
    draft = make_draft(
        job, msg, level=level, kind=kind, step=step, worker=worker, parent=parent, status=status,
        fields=fields, job_name=job_name, job_type=job_type, ts_ms=ts_ms,
        max_message_bytes=settings.max_message_bytes, masker=settings.masker,
    )  # fmt: skip
    return Parsed(draft, checked_src, checked_seq, pack_item(draft, checked_src, checked_seq))


def _source(src: object, seq: object) -> tuple[str | None, int | None]:
    if src is None and seq is None:
        return None, None
    if src is None or seq is None:
        raise InvalidEntry("src" if src is None else "seq", "src and seq go together: give both or neither")
    name = check_name("src", src)
    if not isinstance(seq, int) or isinstance(seq, bool) or not 1 <= seq <= MAX_SEQ:
        raise InvalidEntry("seq", f"must be an integer 1..{MAX_SEQ}, got {seq!r:.40}")
    return name, seq


def _ts_ms(ts: object) -> int | None:
    if ts is None:
        return None
    if not isinstance(ts, str):
        raise InvalidEntry("ts", f"must be an ISO-8601 string, got {type(ts).__name__}")
    ms = iso_to_ms(ts)
    if ms < 0:
        raise InvalidEntry("ts", f"must not be before 1970-01-01T00:00:00Z, got {ts!r:.60}")
    return ms


def _batches(gw: Gateway, job: str, parsed: list[Parsed]) -> list[tuple[Batch, list[Parsed]]]:
    """Consecutive runs of at most ``_MAX_BATCH_ENTRIES`` items and ``DEFAULT_MAX_BATCH_BYTES`` (or one
    bigger item), each with its entries; each carries the last job name and type given within it."""
    keys = gw.keyspace.job_keys(job)
    batches: list[tuple[Batch, list[Parsed]]] = []
    size = 0
    for p in parsed:
        if (
            not batches
            or len(batches[-1][1]) >= _MAX_BATCH_ENTRIES
            or size + len(p.item) > DEFAULT_MAX_BATCH_BYTES
        ):
            batches.append((Batch(job, keys, [], None, None), []))
            size = 0
        batch, entries = batches[-1]
        batch.items.append(p.item)
        entries.append(p)
        size += len(p.item)
        batch.job_name = p.draft.job_name or batch.job_name
        batch.job_type = p.draft.job_type or batch.job_type
    return batches


async def _write(gw: Gateway, job: str, batches: list[tuple[Batch, list[Parsed]]]) -> tuple[list[str], int]:
    """Batches in order, one round trip each; the first failure ends the request. Seq conflicts
    are per entry and the same on every retry: the rest is stored, then they are answered 409."""
    ids: list[str] = []
    duplicates = 0
    conflicts: list[tuple[Parsed, int]] = []
    for batch, entries in batches:
        try:
            (outcome,) = await write_async(gw.writer, [batch], gw.settings.retention)
        except (redis.RedisError, OSError, TimeoutError) as e:
            raise _failure(job, e, len(ids), duplicates) from e
        if isinstance(outcome, BaseException):
            raise _failure(job, outcome, len(ids), duplicates) from outcome
        ids.extend(outcome.ids)
        duplicates += outcome.duplicates
        conflicts.extend((entries[at], reason) for at, reason in outcome.conflicts)
        gw.metrics.ingest_entries.labels(result="accepted").inc(len(outcome.ids))
        gw.metrics.ingest_entries.labels(result="duplicate").inc(outcome.duplicates)
        gw.metrics.ingest_entries.labels(result="rejected").inc(outcome.refused + len(outcome.conflicts))
        if outcome.refused:
            message = f"job {job!r} has ended: {outcome.refused} entries after its end were refused; "
            raise ApiError(409, "job_ended", message + _done(len(ids), duplicates, len(conflicts)))
    if conflicts:
        raise _conflict(job, conflicts, len(ids), duplicates)
    return ids, duplicates


def _done(stored: int, duplicates: int, conflicts: int = 0) -> str:
    done = f"{stored} entries of this request were stored and {duplicates} were duplicates"
    return done + (f"; {conflicts} were seq conflicts" if conflicts else "")


_SHOWN_CONFLICTS = 20


def _conflict(job: str, conflicts: list[tuple[Parsed, int]], stored: int, duplicates: int) -> ApiError:
    """409 naming the (src, seq) pairs refused, and why: a seq is never silently a duplicate."""
    shown = ", ".join(f"{p.src}#{p.seq}" for p, _ in conflicts[:_SHOWN_CONFLICTS])
    more = f" and {len(conflicts) - _SHOWN_CONFLICTS} more" if len(conflicts) > _SHOWN_CONFLICTS else ""
    why = (
        "they are already stored with other content (send new content under new seqs)"
        if all(reason == SEQ_REUSED for _, reason in conflicts)
        else "they are already stored with other content, or their src has too many holes in its seqs"
    )
    message = f"{len(conflicts)} entries of job {job!r} were not stored: seqs {shown}{more}: {why}; "
    log.warning("ingest into %s: %s", job, message)
    return ApiError(409, "seq_conflict", message + _done(stored, duplicates))


def _failure(job: str, e: BaseException, stored: int, duplicates: int) -> ApiError:
    failure = redis_failure(e, _done(stored, duplicates), refused_code="write_failed")
    if failure.status == 503:
        failure.message += " with the same src/seq"
    log.log(
        logging.WARNING if failure.status == 503 else logging.ERROR,
        "ingest into %s: %s",
        job,
        failure.message,
    )
    return failure
