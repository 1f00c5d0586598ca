"""OTLP log records as logbroker entries, by the OpenTelemetry CI/CD semantic conventions (docs/design.md §5).

Pure functions from a decoded ``ExportLogsServiceRequest`` to one :class:`Mapped` per record
that names a job, or a :class:`Rejected` with the reason for one that does not. Nothing here
validates names or sizes: the records go through ingest's ``make_draft`` like every other
entry (gateway.api.ingest), so the publishers' rules hold for OTLP too.

Why the mapping is this one: a CI/CD system that already speaks OpenTelemetry puts
``cicd.pipeline.run.id`` and ``cicd.pipeline.task.name`` on its resource; a worker that follows
the conventions needs no logbroker-specific code at all. A record's own attribute wins over its
resource's, so one process can log for several steps.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from broker.constants import LEVELS

__all__ = [
    "AttributeNames",
    "Mapped",
    "Rejected",
    "attributes_of",
    "count_records",
    "level_of",
    "map_request",
    "value_of",
]


@dataclass(frozen=True, slots=True)
class AttributeNames:
    """The attribute each entry key is read from: ``LOGBROKER_OTLP_*_ATTRIBUTE`` (their defaults,
    the CI/CD semantic conventions, live in ``GatewaySettings``)."""

    job: str
    job_name: str
    step: str
    worker: str
    worker_fallback: str
    src: str = "logbroker.src"
    seq: str = "logbroker.seq"

    def mapped(self) -> frozenset[str]:
        """Never copied into ``fields`` (the fallback only when it was used: see ``_resource``)."""
        return frozenset({self.job, self.job_name, self.step, self.worker, self.src, self.seq})


@dataclass(frozen=True, slots=True)
class Mapped:
    """One record's entry, before validation: ``make_draft``'s arguments and the idempotency pair."""

    index: int  # the record's position in the request (for rejection messages)
    job: object
    msg: str
    level: int
    step: object
    worker: object
    job_name: object
    ts_ms: int | None
    fields: dict[str, Any] | None
    src: object
    seq: object


@dataclass(frozen=True, slots=True)
class Rejected:
    index: int
    reason: str


_DEBUG, _INFO, _WARNING = LEVELS["debug"], LEVELS["info"], LEVELS["warning"]
_ERROR, _CRITICAL = LEVELS["error"], LEVELS["critical"]
# severity_number ranges of the OpenTelemetry logs data model: 1-8 TRACE/DEBUG, 9-12 INFO, ...
_LEVELS = [_INFO] + [_DEBUG] * 8 + [_INFO] * 4 + [_WARNING] * 4 + [_ERROR] * 4 + [_CRITICAL] * 4


def level_of(severity_number: int) -> int:
    """0 (unspecified) and numbers outside 1..24 are info: a record is never refused for its level."""
    return _LEVELS[severity_number] if 0 <= severity_number < len(_LEVELS) else _INFO


_SCALARS = frozenset({"string_value", "int_value", "bool_value"})


def value_of(value: AnyValue) -> Any:
    """An ``AnyValue`` as JSON with its type kept; bytes as base64 (as in OTLP/JSON), non-finite
    doubles as their OTLP/JSON names (``NaN``, ``Infinity``), since ``fields`` is strict JSON."""
    kind = value.WhichOneof("value")
    if kind in _SCALARS:  # nearly every attribute: one lookup
        return getattr(value, kind)
    if kind == "double_value":
        d = value.double_value
        return d if math.isfinite(d) else ("NaN" if math.isnan(d) else ("Infinity" if d > 0 else "-Infinity"))
    if kind == "array_value":
        return [value_of(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return attributes_of(value.kvlist_value.values)
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode("ascii")
    return None  # an empty AnyValue


def attributes_of(attributes: Iterable[KeyValue]) -> dict[str, Any]:
    """Attributes as a dict; of repeated keys the last wins (the data model forbids them)."""
    return {kv.key: value_of(kv.value) for kv in attributes}


def _message(body: AnyValue) -> str:
    kind = body.WhichOneof("value")
    if kind == "string_value":
        return body.string_value
    if kind is None:
        return ""
    if kind == "bytes_value":
        return body.bytes_value.decode("utf-8", "replace")
    value = value_of(body)
    if isinstance(value, str):  # a number's or bool's JSON, not quoted
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class _Identity(NamedTuple):
    job: Any
    job_name: Any
    step: Any
    worker: Any
    fallback: bool  # the worker came from the fallback attribute
    src: Any
    seq: Any


def _identity(own: dict[str, Any], values: dict[str, Any], names: AttributeNames) -> _Identity:
    def pick(name: str) -> Any:
        return own[name] if name in own else values.get(name)

    worker, fallback = pick(names.worker), False
    if worker is None:
        worker = pick(names.worker_fallback)
        fallback = worker is not None
    job = pick(names.job)
    if isinstance(job, int) and not isinstance(job, bool):
        job = str(job)  # a run number sent as an int is the same id as its digits
    return _Identity(
        job, pick(names.job_name), pick(names.step), worker, fallback, pick(names.src), pick(names.seq)
    )


@dataclass(frozen=True, slots=True)
class _Resource:
    """What a resource gives each of its records: its mapped values and its other attributes."""

    identity: _Identity  # of a record with no identifying attribute of its own (nearly all)
    values: dict[str, Any]
    fields: dict[str, Any]  # unmapped attributes, the worker fallback included
    fields_without_fallback: dict[str, Any]  # ... when the fallback names the worker


def _resource(attributes: dict[str, Any], names: AttributeNames, mapped: frozenset[str]) -> _Resource:
    fields = {k: v for k, v in attributes.items() if k not in mapped}
    without = {k: v for k, v in fields.items() if k != names.worker_fallback}
    return _Resource(_identity({}, attributes, names), attributes, fields, without)


def map_request(request: ExportLogsServiceRequest, names: AttributeNames) -> Iterator[Mapped | Rejected]:
    """Every record of the request, in request order (their order per job is what gets stored)."""
    index = 0
    mapped = names.mapped()
    identifying = mapped | {names.worker_fallback}
    for resource_logs in request.resource_logs:
        resource = _resource(attributes_of(resource_logs.resource.attributes), names, mapped)
        for scope_logs in resource_logs.scope_logs:
            for record in scope_logs.log_records:
                yield _record(index, record, resource, names, mapped, identifying)
                index += 1


def count_records(request: ExportLogsServiceRequest) -> int:
    return sum(len(s.log_records) for r in request.resource_logs for s in r.scope_logs)


def _record(
    index: int,
    record: Any,
    resource: _Resource,
    names: AttributeNames,
    mapped: frozenset[str],
    identifying: frozenset[str],
) -> Mapped | Rejected:
    own = attributes_of(record.attributes)
    overrides = bool(own) and not identifying.isdisjoint(own)
    ident = _identity(own, resource.values, names) if overrides else resource.identity
    if ident.job is None:
        return Rejected(index, f"no job: the record and its resource lack the {names.job!r} attribute")
    if ident.worker is not None and ident.step is None:
        why = f"a worker belongs to a step ({names.step!r} is missing)"
        return Rejected(index, f"worker {ident.worker!r:.80} without a step: {why}")
    resource_fields = resource.fields
    if ident.fallback:
        own.pop(names.worker_fallback, None)
        resource_fields = resource.fields_without_fallback
    fields = {k: v for k, v in own.items() if k not in mapped} if overrides else own
    if record.trace_id:
        fields["trace_id"] = record.trace_id.hex()
    if record.span_id:
        fields["span_id"] = record.span_id.hex()
    if resource_fields:
        fields["resource"] = resource_fields
    nanos = record.time_unix_nano or record.observed_time_unix_nano
    return Mapped(
        index, ident.job, _message(record.body), level_of(record.severity_number), ident.step, ident.worker,
        ident.job_name, nanos // 1_000_000 if nanos else None, fields or None, ident.src, ident.seq,
    )  # fmt: skip
