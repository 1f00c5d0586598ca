"""The gateway's OpenAPI 3.1 document (docs/design.md §5), served at ``GET /openapi.json``.

Why it is written by hand: the handlers validate their inputs with plain code (``params.py``,
``ids.py``, ``ingest.py``, ``broker.entry``), not with a schema library, so this module restates
those rules as JSON Schema, importing every limit and name list from where the handlers take it.
``tests/gateway/api/test_openapi.py`` keeps the two honest: each registered route is documented (and only
those), real answers validate against the schemas, and schemathesis fuzzes a live gateway from
this document. ``openapi_document`` is a pure function of the settings, so the configurable limits
(replay page size, entries per ingest request) are the ones this gateway applies.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from broker.constants import (
    JSON,
    KINDS,
    LEVELS,
    MAX_FIELDS_BYTES,
    MAX_FIELDS_DEPTH,
    MAX_NAME_LEN,
    MAX_SEQ,
    MAX_STATUS_LEN,
    NDJSON,
)

from ..otlp_wire import OTLP_LOGS_PATH, PROTOBUF
from ..settings import GatewaySettings
from .auth import PUBLIC_ROUTES
from .jobs import DEFAULT_LIMIT as JOBS_DEFAULT_LIMIT
from .jobs import MAX_LIMIT as JOBS_MAX_LIMIT

__all__ = ["openapi_document", "openapi_route"]

Schema = dict[str, Any]

JOB_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
CURSOR_ID_PATTERN = r"^\d{1,20}(-\d{1,20})?$"  # what ``ids.parse_id`` accepts: ``<ms>`` or ``<ms>-<seq>``
ENTRY_ID_PATTERN = r"^\d{1,20}-\d{1,20}$"  # what Redis hands out
NAME_PATTERN = r"^[^\x00-\x1f\x7f]*$"  # step, worker, parent, src, job name/type: no control characters
STATUS_PATTERN = rf"^[A-Za-z0-9_.-]{{1,{MAX_STATUS_LEN}}}$"
# ``<score>:<job>``, a previous ``next``; ``<score>:~<hash>`` names a job the token does not cover
JOBS_CURSOR_PATTERN = r"^\d{1,19}:([A-Za-z0-9._:-]{1,128}|~[0-9a-f]{32})$"
SSE = "text/event-stream"
FILTERS = ("step", "worker", "level", "kind")

ERRORS: dict[int, str] = {
    400: "A malformed job id, stream id, parameter or entry: `invalid_job`, `invalid_id`, "
    "`invalid_parameter`, `invalid_level`, `invalid_kind`, `invalid_cursor`, `invalid_status`, "
    "`invalid_entry`, `invalid_json`, `invalid_body`, `invalid_encoding`, `empty_body`, "
    "`unknown_parameter` or `repeated_parameter`",
    401: "`unauthorized`: the token is missing, malformed, expired or badly signed",
    403: "`forbidden`: the token does not cover this scope or job",
    404: "`job_not_found`: the job never existed or has expired",
    409: "`job_ended`: the job has an end entry, and nothing is stored after it (what the request "
    "stored before that point is said in the message); or `seq_conflict`: src/seq pairs already "
    "stored with other content were not stored (the rest was; the message names them)",
    413: "`body_too_large` (the body is over the size limit) or `too_many_entries`",
    415: "`unsupported_media_type`: the body must be application/json or application/x-ndjson, UTF-8 "
    "(application/x-protobuf or application/json on /v1/logs)",
    503: "`redis_unavailable` (Redis is not reachable) or `too_many_clients` (the gateway is at its "
    "client limit): retry after `Retry-After` seconds",
}
STREAM_200 = (
    "`retry:`, then one event per entry: `id:` and `data:` (the Entry as one line of JSON). The end "
    "entry is `event: end` (the stream closes after it), a trimmed range `event: gap`; an event with "
    "only `id:` moves Last-Event-ID past filtered entries; `: heartbeat` comments keep it alive."
)


def _str(pattern: str | None = None, **extra: Any) -> Schema:
    return {"type": "string", **({"pattern": pattern} if pattern else {}), **extra}


def _int(minimum: int, maximum: int | None = None, **extra: Any) -> Schema:
    bounds = {"minimum": minimum} if maximum is None else {"minimum": minimum, "maximum": maximum}
    return {"type": "integer", **bounds, **extra}


def _array(items: Schema, **extra: Any) -> Schema:
    return {"type": "array", "items": items, **extra}


def _ref(name: str, kind: str = "schemas") -> Schema:
    return {"$ref": f"#/components/{kind}/{name}"}


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def _obj(properties: dict[str, Schema], required: list[str] | None = None, **extra: Any) -> Schema:
    """A closed object; ``required`` defaults to every property (wire shapes always carry all keys)."""
    required = list(properties) if required is None else required
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
        **extra,
    }


def _map(values: Schema) -> Schema:
    return {"type": "object", "additionalProperties": values}


def _any_case(words: list[str]) -> str:
    """A pattern matching any of ``words`` in any ASCII case (``level=WARNING`` is accepted)."""
    return "^(" + "|".join("".join(f"[{c.lower()}{c.upper()}]" for c in word) for word in words) + ")$"


def _implies(key: str, when: Schema, needed: str, then: Schema) -> Schema:
    """``needed`` must be present and match ``then`` whenever ``key`` is present and matches ``when``."""
    return {
        "if": {"properties": {key: when}, "required": [key]},
        "then": {"properties": {needed: then}, "required": [needed]},
    }


NAME = _str(NAME_PATTERN, minLength=1, maxLength=MAX_NAME_LEN)
OPT_NAME = _nullable(NAME)
ENTRY_ID = _str(ENTRY_ID_PATTERN)
STATUS = _str(STATUS_PATTERN)
COUNT = _int(0)
MS = _nullable(_int(0))
LEVEL_ANY_CASE = _str(_any_case(list(LEVELS)))


def _schemas(settings: GatewaySettings) -> dict[str, Schema]:
    summary = {
        "job": _str(JOB_PATTERN),
        "name": OPT_NAME,
        "type": OPT_NAME,
        "status": _nullable(STATUS),
        "created_ms": MS,
        "updated_ms": MS,
        "ended_ms": MS,
        "entries": COUNT,
    }
    first_last = {"first_id": _nullable(ENTRY_ID), "last_id": _nullable(ENTRY_ID)}
    step = {"entries": COUNT, "status": _nullable(_str()), **first_last}
    worker = _obj({"entries": COUNT, "status": _nullable(_str())})
    return {
        "Error": _obj({"error": _obj({"code": _str("^[a-z_]+$"), "message": _str()})}),
        "Entry": _obj(
            {
                "id": ENTRY_ID,
                "job": _str(JOB_PATTERN),
                "job_name": OPT_NAME,
                "job_type": OPT_NAME,
                "step": OPT_NAME,
                "worker": OPT_NAME,
                "parent": OPT_NAME,
                "line": _int(1),
                "level": {"enum": list(LEVELS)},
                "kind": {"enum": list(KINDS)},
                "status": _nullable(STATUS),
                "msg": _str(),
                "ts": _str(format="date-time"),
                "src": OPT_NAME,
                "seq": _nullable(_int(1, MAX_SEQ)),
                "fields": _nullable({"type": "object"}),
            },
            description="One stored log entry (docs/design.md §2); every key is always present.",
        ),
        "IngestEntry": _ingest_entry(settings),
        "IngestAnswer": _obj({"accepted": COUNT, "duplicates": COUNT, "ids": _array(ENTRY_ID)}),
        "OtlpAnswer": _obj(
            {
                "partialSuccess": _obj(
                    {"rejectedLogRecords": {"type": ["string", "integer"]}, "errorMessage": _str()}, []
                )
            },
            [],
            description="ExportLogsServiceResponse (OTLP/JSON): empty on full success",
        ),
        "OtlpStatus": _obj(
            {"code": {"type": "integer"}, "message": _str()},
            required=["message"],
            description="google.rpc.Status: the message starts with the gateway's error code",
        ),
        "JobSummary": _obj(summary),
        "JobList": _obj({"jobs": _array(_ref("JobSummary")), "next": _nullable(_str(JOBS_CURSOR_PATTERN))}),
        "StepMeta": _obj({**step, "workers": _map(worker)}),
        "JobMeta": _obj(
            {
                **summary,
                **first_last,
                "end_id": _nullable(ENTRY_ID),
                "job_entries": COUNT,
                "masked": COUNT,
                "steps": _map(_ref("StepMeta")),
                "publishers": _map(_obj({"entries": COUNT, "last_seq": COUNT})),
            }
        ),
        "ReplayPage": _obj(
            {
                "entries": _array(_ref("Entry")),
                "next": _nullable(ENTRY_ID),
                "gap": _nullable(_ref("Gap")),
                "reset": _nullable(_ref("Reset")),
            }
        ),
        "Reset": _obj(
            {"after": ENTRY_ID, "first_available": _nullable(ENTRY_ID), "reason": {"const": "data_lost"}},
            description="`after` names an entry older than the job's first one: the data it came from was "
            "lost (Redis restarted without it, or the job expired and was written again); the answer "
            "holds the job from its start, and a client drops what it held",
        ),
        "Gap": _obj(
            {"after": ENTRY_ID, "first_available": ENTRY_ID, "reason": {"const": "trimmed"}},
            description="entries after `after` up to `first_available` were removed by retention",
        ),
    }


def _ingest_entry(settings: GatewaySettings) -> Schema:
    """What ``gateway.ingest.entry_of`` and ``broker.entry.make_draft`` accept; ``null`` means unset."""
    levels = [LEVEL_ANY_CASE, _int(0), {"type": "null"}]
    fields = f"JSON nested at most {MAX_FIELDS_DEPTH} levels deep, at most {MAX_FIELDS_BYTES} bytes packed"
    properties = {
        "msg": _str(description=f"longer than {settings.max_message_bytes} bytes: cut, with a marker"),
        "level": {"anyOf": levels, "description": "a name (any case) or a `logging` number; default info"},
        "kind": {"enum": [*KINDS, None], "description": "default log"},
        "status": _nullable(STATUS),
        **{key: OPT_NAME for key in ("step", "worker", "parent", "job_name", "job_type", "src")},
        "fields": _nullable({"type": "object", "description": fields}),
        "ts": _nullable(_str(format="date-time", description="ISO-8601, not before 1970; default now")),
        "seq": _nullable(_int(1, MAX_SEQ)),
    }
    conditions = [
        _implies("kind", {"enum": ["status", "end"]}, "status", _str()),
        _implies("worker", _str(), "step", _str()),
        _implies("src", _str(), "seq", {"type": "integer"}),
        _implies("seq", {"type": "integer"}, "src", _str()),
    ]
    rules = "status and end entries need `status`; a worker needs its step; src and seq go together"
    return _obj(properties, ["msg"], allOf=conditions, description=rules + ", seq increasing per src.")


def _query(name: str, schema: Schema, description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _parameters(settings: GatewaySettings) -> dict[str, Any]:
    """Shared parameters; keys differ from names where one name means two things (``after``, ``limit``)."""
    kind = f"\\s*({'|'.join(KINDS)})\\s*"
    most, default = settings.replay_max_limit, settings.replay_default_limit
    return {
        "job": {"name": "job", "in": "path", "required": True, "schema": _str(JOB_PATTERN)},
        "step": _query("step", NAME, "only this step's entries (and the end entry)"),
        "worker": _query("worker", NAME, "only this worker's entries (and the end entry)"),
        "level": _query("level", LEVEL_ANY_CASE, "minimum level"),
        "kind": _query("kind", _str(f"^{kind}(,{kind})*$"), "one kind or a comma list"),
        "after": _query("after", _str(CURSOR_ID_PATTERN), "start strictly after this id"),
        "before": _query("before", _str(CURSOR_ID_PATTERN), "stop strictly before this id"),
        "limit": _query("limit", _int(1, most, default=default), "entries per page (NDJSON: all if unset)"),
        "order": _query("order", {"enum": ["asc", "desc"], "default": "asc"}, "asc: next is an after"),
        "format": _query("format", {"enum": ["json", "ndjson"]}, "overrides Accept"),
        "stream_after": _query("after", _str(r"^(\$|\d{1,20}(-\d{1,20})?)$"), "after this id; $: new only"),
        "tail": _query("tail", _int(0, most), "start with the N newest matching entries"),
        "last_event_id": {
            "name": "Last-Event-ID",
            "in": "header",
            "required": False,
            "schema": _str(r"^(\d{1,20}(-\d{1,20})?)?$"),
            "description": "resume after this id (EventSource sets it; empty: unset); wins over after, tail",
        },
        "jobs_limit": _query("limit", _int(1, JOBS_MAX_LIMIT, default=JOBS_DEFAULT_LIMIT), "jobs per page"),
        "cursor": _query("cursor", _str(JOBS_CURSOR_PATTERN), "the `next` of the previous page"),
        "status": _query("status", STATUS, "only jobs with this status"),
    }


def _op(op_id: str, tag: str, summary: str, responses: dict[str, Any], params: str = "") -> dict[str, Any]:
    """One operation; ``params`` names shared parameters (``components/parameters``), space-separated."""
    op: dict[str, Any] = {"operationId": op_id, "tags": [tag], "summary": summary, "responses": responses}
    if params:
        op["parameters"] = [_ref(name, "parameters") for name in params.split()]
    return op


def _ok(schema: Schema, description: str, media: str = JSON) -> dict[str, Any]:
    return {"200": {"description": description, "content": {media: {"schema": schema}}}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(status): _ref(str(status), "responses") for status in statuses}


def _otlp_errors(*statuses: int) -> dict[str, Any]:
    """``POST /v1/logs`` answers errors as ``google.rpc.Status``, protobuf for a protobuf request."""
    status = {JSON: {"schema": _ref("OtlpStatus")}, PROTOBUF: {"schema": _str(format="binary")}}
    retry_after = {"Retry-After": {"description": "seconds to wait", "schema": _str()}}
    return {
        str(s): {
            "description": ERRORS[s],
            "content": status,
            **({"headers": retry_after} if s == 503 else {}),
        }
        for s in statuses
    }


def _otlp(settings: GatewaySettings) -> dict[str, Any]:
    body = {
        "required": True,
        "description": "an OTLP ExportLogsServiceRequest, protobuf or OTLP/JSON (integer enums, hex ids), "
        f"gzip allowed, at most {settings.max_body_bytes} bytes and {settings.max_ingest_entries} records",
        "content": {JSON: {"schema": {"type": "object"}}, PROTOBUF: {"schema": _str(format="binary")}},
    }
    answer = {JSON: {"schema": _ref("OtlpAnswer")}, PROTOBUF: {"schema": _str(format="binary")}}
    responses = {
        "200": {"description": "stored, but for the records partial success rejects", "content": answer}
    }
    summary = "OTLP/HTTP logs, mapped by the CI/CD semantic conventions (docs/design.md §5)"
    op = _op("postOtlpLogs", "logs", summary, responses | _otlp_errors(400, 413, 415, 503))
    return {"post": op | {"requestBody": body}}


def _paths(settings: GatewaySettings) -> dict[str, Any]:
    ready = _obj({"status": {"const": "ready"}, "clients": COUNT})
    entries = _array(_ref("IngestEntry"), minItems=1, maxItems=settings.max_ingest_entries)
    ingest_body = {
        "required": True,
        "description": f"JSON array or NDJSON (one object per line), at most {settings.max_body_bytes} bytes",
        "content": {JSON: {"schema": entries}, NDJSON: {"schema": entries}},
    }
    replay = {JSON: {"schema": _ref("ReplayPage")}, NDJSON: {"schema": _array(_ref("Entry"))}}
    sse_headers = {
        "Cache-Control": {"schema": {"const": "no-cache"}},
        "X-Accel-Buffering": {"schema": {"const": "no"}},
    }
    stream = {
        "200": {"description": STREAM_200, "headers": sse_headers, "content": {SSE: {"schema": _str()}}},
        "204": {"description": "the job has ended and the cursor is at its end: stop reconnecting"},
    }
    filters = " ".join(FILTERS)
    alive = _ok(_obj({"status": {"const": "ok"}}), "alive")
    return {
        "/healthz": {"get": _op("healthz", "ops", "Liveness", alive)},
        "/readyz": {"get": _op("readyz", "ops", "Redis and the readers", _ok(ready, "ready") | _errors(503))},
        "/metrics": {"get": _op("metrics", "ops", "Prometheus metrics", _ok(_str(), "text", "text/plain"))},
        "/openapi.json": {"get": _op("openapi", "ops", "This document", _ok({"type": "object"}, "OpenAPI"))},
        "/": {"get": _op("viewer", "ops", "The web log viewer", _ok(_str(), "its page", "text/html"))},
        "/v1/jobs": {
            "get": _op(
                "listJobs", "jobs", "Jobs by last activity, newest first",
                _ok(_ref("JobList"), "a page of jobs") | _errors(400, 503), "jobs_limit cursor status",
            )
        },
        "/v1/jobs/{job}": {
            "get": _op(
                "getJob", "jobs", "A job's meta: totals per step, worker and publisher",
                _ok(_ref("JobMeta"), "the job") | _errors(400, 404, 503), "job",
            )
        },
        "/v1/jobs/{job}/logs": {
            "get": _op(
                "getLogs", "logs", "Replay: a page of JSON, or all of the range as NDJSON (Accept or format)",
                {"200": {"description": "entries", "content": replay}} | _errors(400, 404, 503),
                f"job after before limit order {filters} format",
            ),
            "post": _op(
                "postLogs", "logs", "Ingest: validated whole, stored in order, idempotent by src/seq",
                _ok(_ref("IngestAnswer"), "stored") | _errors(400, 409, 413, 415, 503), "job",
            )
            | {"requestBody": ingest_body},
        },
        OTLP_LOGS_PATH: _otlp(settings),
        "/v1/jobs/{job}/stream": {
            "get": _op(
                "streamJob", "logs", "Server-Sent Events from the start position, then live",
                stream | _errors(400, 503), f"job stream_after tail {filters} last_event_id",
            )
        },
    }  # fmt: skip


def _secure(paths: dict[str, Any]) -> None:
    """With auth on, every route but ``gateway.auth.PUBLIC_ROUTES`` takes a token: ``Authorization:
    Bearer`` or ``?token=`` (a browser's EventSource cannot set headers)."""
    for path, item in paths.items():
        if path not in PUBLIC_ROUTES:
            for op in item.values():
                op["security"] = [{"bearer": []}, {"token": []}]
                op["responses"] |= _otlp_errors(401, 403) if path == OTLP_LOGS_PATH else _errors(401, 403)


def openapi_document(settings: GatewaySettings) -> dict[str, Any]:
    """The whole document as JSON-ready data: no I/O, a pure function of ``settings``."""
    paths = _paths(settings)
    retry_after = {"Retry-After": {"description": "seconds to wait", "schema": _str()}}
    responses = {
        str(status): {
            "description": text,
            "content": {JSON: {"schema": _ref("Error")}},
            **({"headers": retry_after} if status == 503 else {}),
        }
        for status, text in ERRORS.items()
    }
    components = {"schemas": _schemas(settings), "parameters": _parameters(settings), "responses": responses}
    if settings.auth_secret is not None:
        _secure(paths)
        components["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
            "token": {"type": "apiKey", "in": "query", "name": "token"},
        }
    description = 'Jobs\' logs as JSON and Server-Sent Events. Every error is {"error": {"code", "message"}}.'
    return {
        "openapi": "3.1.0",
        "info": {"title": "logbroker gateway", "version": "1", "description": description},
        "tags": [{"name": "jobs"}, {"name": "logs"}, {"name": "ops"}],
        "paths": paths,
        "components": components,
    }


def openapi_route(settings: GatewaySettings) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The ``GET /openapi.json`` handler, with the document encoded once when the app is built."""
    body = json.dumps(openapi_document(settings), separators=(",", ":")).encode()

    async def openapi_json(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=JSON)

    return openapi_json
