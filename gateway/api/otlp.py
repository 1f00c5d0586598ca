"""``POST /v1/logs``: OTLP/HTTP logs from any OpenTelemetry SDK (docs/design.md §5, "OTLP logs").

Why it is built this way:

* One request may carry many jobs. Records are mapped (``gateway.otlp_mapping``), then made into
  entries by ingest's own ``parsed_entry`` (the publishers' rules), then written through ingest's
  ``_batches`` and the one write script: a job's entries keep their request order, and each job
  gets one script call (more only past 1000 entries or 1 MiB), all jobs in one pipelined round.
* A record that cannot be stored for a reason of its own (no job, a worker without a step, a name
  or size the rules refuse, a job the token does not cover, a seq conflict, a job that has ended)
  is rejected through OTLP *partial success* with the reason, and the rest is stored: an OTLP
  client drops a request it gets a 400 for, so one bad record must not cost the others. A request
  whose records are all rejected is still a 200 (the spec). Only a body that cannot be decoded is a
  400, and only when Redis fails is the whole request answered 503 (``Retry-After``): the SDKs
  retry a 503 with the same body, and what was stored before the failure is deduplicated only for
  records with ``logbroker.src``/``logbroker.seq`` (see design §5).
* Error answers are ``google.rpc.Status`` in the request's encoding, as the spec asks: this route
  raises ``ApiError`` like any other and ``error_middleware`` encodes it (``gateway.otlp_wire``),
  auth refusals included; the message starts with the gateway's error code.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import redis
from aiohttp import web

from broker.constants import JSON, KIND_LOG
from broker.delivery import write_async
from broker.entry import check_job_id
from broker.errors import InvalidEntry
from broker.outbox import Batch

from ..errors import ApiError, bad_request
from ..otlp_mapping import AttributeNames, Mapped, Rejected, count_records, map_request
from ..otlp_wire import PROTOBUF, BadOtlp, decode_request, encode_response
from ..settings import GatewaySettings
from .auth import AUTH, Grant, forbidden
from .body import read_body
from .ingest import _THREAD_BODY_BYTES, Parsed, _batches, _failure, counted, parsed_entry
from .state import GATEWAY, Gateway

log = logging.getLogger(__name__)

_SHOWN_REASONS = 10


@dataclass(slots=True)
class Prepared:
    """A request's entries by job (request order within each), and its rejected records."""

    jobs: dict[str, list[Parsed]] = field(default_factory=dict)
    rejected: list[Rejected] = field(default_factory=list)
    records: int = 0


async def post_otlp_logs(request: web.Request) -> web.Response:
    """Errors are raised as ``ApiError``: ``error_middleware`` answers them as ``google.rpc.Status``."""
    gw = request.app[GATEWAY]
    return await counted(gw.metrics.otlp_requests, _export(gw, request))


def _is_json(request: web.Request) -> bool:
    ctype = request.content_type
    if ctype not in (PROTOBUF, JSON):
        got = request.headers.get("Content-Type", "")
        message = f"Content-Type must be {PROTOBUF} or {JSON}, got {got!r:.80}"
        raise ApiError(415, "unsupported_media_type", message)
    return ctype == JSON


async def _export(gw: Gateway, request: web.Request) -> web.Response:
    json_body = _is_json(request)
    body = await read_body(request, gw.settings.max_body_bytes)
    grant = request.get(AUTH)
    if len(body) > _THREAD_BODY_BYTES:
        prepared = await asyncio.to_thread(prepare, gw.settings, body, json_body, grant)
    else:
        prepared = prepare(gw.settings, body, json_body, grant)
    rejected = len(prepared.rejected)
    gw.metrics.ingest_entries.labels(result="rejected").inc(rejected)
    reasons = [f"record {r.index}: {r.reason}" for r in prepared.rejected[:_SHOWN_REASONS]]
    rejected += await _write(gw, prepared.jobs, reasons)
    message = ""
    if rejected:
        shown = "; ".join(reasons[:_SHOWN_REASONS])
        more = "; ..." if len(reasons) > _SHOWN_REASONS or len(prepared.rejected) > _SHOWN_REASONS else ""
        message = f"{rejected} of {prepared.records} log records rejected: {shown}{more}"
    ctype = JSON if json_body else PROTOBUF
    return web.Response(body=encode_response(rejected, message, json_body), content_type=ctype)


def prepare(settings: GatewaySettings, body: bytes, json_body: bool, grant: Grant | None) -> Prepared:
    """Decode, map and validate every record; raises ``ApiError`` only for the request as a whole."""
    try:
        otlp = decode_request(body, json_body)
    except BadOtlp as e:
        raise bad_request("invalid_body", str(e)) from None
    prepared = Prepared(records=count_records(otlp))
    if prepared.records > settings.max_ingest_entries:
        message = f"at most {settings.max_ingest_entries} log records per request: export smaller batches"
        raise ApiError(413, "too_many_entries", message)
    mapped = _covered(map_request(otlp, attribute_names(settings)), grant, prepared)
    last_seq: dict[tuple[str, str], int] = {}
    for m in mapped:
        try:
            job = check_job_id(m.job)
            p = parsed_entry(
                settings, job, m.msg, level=m.level, kind=KIND_LOG, step=m.step, worker=m.worker,
                fields=m.fields, job_name=m.job_name, ts_ms=m.ts_ms, src=m.src, seq=m.seq,
            )  # fmt: skip
            if p.src is not None and p.seq is not None:
                previous = last_seq.get((job, p.src), 0)
                if p.seq <= previous:
                    raise InvalidEntry("seq", f"must increase per src and job: {p.seq} after {previous}")
                last_seq[job, p.src] = p.seq
        except InvalidEntry as e:
            prepared.rejected.append(Rejected(m.index, str(e)))
            continue
        prepared.jobs.setdefault(job, []).append(p)
    prepared.rejected.sort(key=lambda r: r.index)
    return prepared


def _covered(records: Iterable[Mapped | Rejected], grant: Grant | None, prepared: Prepared) -> list[Mapped]:
    """The records a token may write; 403 when the request names jobs and it covers none of them."""
    mapped: list[Mapped] = []
    for record in records:
        if isinstance(record, Rejected):
            prepared.rejected.append(record)
        else:
            mapped.append(record)
    if grant is None or grant.all_jobs:
        return mapped
    allowed = [m for m in mapped if isinstance(m.job, str) and grant.covers(m.job)]
    if mapped and not allowed:
        jobs = sorted({str(m.job) for m in mapped})
        raise forbidden(f"this token covers none of the jobs of this request ({', '.join(jobs[:5])[:200]})")
    if len(allowed) < len(mapped):
        kept = {id(m) for m in allowed}
        refused = (m for m in mapped if id(m) not in kept)
        why = "this token does not cover job"
        prepared.rejected.extend(Rejected(m.index, f"{why} {m.job!r:.140}") for m in refused)
    return allowed


def attribute_names(settings: GatewaySettings) -> AttributeNames:
    return AttributeNames(
        job=settings.otlp_job_attribute, job_name=settings.otlp_job_name_attribute,
        step=settings.otlp_step_attribute, worker=settings.otlp_worker_attribute,
        worker_fallback=settings.otlp_worker_fallback_attribute,
    )  # fmt: skip


async def _write(gw: Gateway, jobs: dict[str, list[Parsed]], reasons: list[str]) -> int:
    """Every job's batches, a round of one batch per job at a time (one round trip each); a job
    stops at its first failure, so what it stored is a prefix of its entries. Returns how many
    were rejected (seq conflicts, a job that has ended), appending their reasons; a Redis failure
    is raised after the round, as 503 (retryable) or 500."""
    queues = {job: deque(_batches(gw, job, parsed)) for job, parsed in jobs.items()}
    stored = duplicates = rejected = 0
    failure: tuple[str, BaseException] | None = None
    while queues:
        round_ = [(job, queue.popleft()) for job, queue in queues.items()]
        batches: list[Batch] = [batch for _, (batch, _) in round_]
        try:
            outcomes = await write_async(gw.writer, batches, gw.settings.retention)
        except (redis.RedisError, OSError, TimeoutError) as e:
            raise _failure(round_[0][0], e, stored, duplicates) from e
        for (job, (_, entries)), outcome in zip(round_, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                failure = failure or (job, outcome)
                queues.pop(job)
                continue
            stored += len(outcome.ids)
            duplicates += outcome.duplicates
            lost = outcome.refused + len(outcome.conflicts)
            rejected += lost
            gw.metrics.ingest_entries.labels(result="accepted").inc(len(outcome.ids))
            gw.metrics.ingest_entries.labels(result="duplicate").inc(outcome.duplicates)
            gw.metrics.ingest_entries.labels(result="rejected").inc(lost)
            reasons.extend(
                f"{entries[at].src}#{entries[at].seq} of job {job!r}: already stored with other content"
                for at, _ in outcome.conflicts
            )
            if outcome.refused:
                reasons.append(f"job {job!r} has ended: {outcome.refused} records after its end were refused")
                queues.pop(job)  # its later batches would be refused too
        queues = {job: queue for job, queue in queues.items() if queue}
    if failure is not None:
        raise _failure(failure[0], failure[1], stored, duplicates) from failure[1]
    return rejected
