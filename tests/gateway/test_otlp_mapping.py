"""``gateway.otlp_mapping`` as pure functions: every AnyValue kind, bodies, the record-wins rule,
the worker fallback, and what is rejected (docs/design.md §5, ``POST /v1/logs``)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from gateway.api.otlp import attribute_names
from gateway.otlp_mapping import Mapped, Rejected, level_of, map_request, value_of
from gateway.settings import GatewaySettings

NAMES = attribute_names(GatewaySettings())  # the defaults: the CI/CD semantic conventions


def request(resource: list[KeyValue], *records: dict[str, Any]) -> ExportLogsServiceRequest:
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    rl.resource.attributes.extend(resource)
    scope = rl.scope_logs.add()
    for r in records:
        scope.log_records.add(**r)
    return req


def kv(key: str, **value: Any) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(**value))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (AnyValue(string_value="s"), "s"),
        (AnyValue(int_value=-(2**63)), -(2**63)),
        (AnyValue(bool_value=False), False),
        (AnyValue(double_value=0.5), 0.5),
        (AnyValue(double_value=math.inf), "Infinity"),
        (AnyValue(double_value=-math.inf), "-Infinity"),
        (AnyValue(double_value=math.nan), "NaN"),
        (AnyValue(bytes_value=b"\x00\xff"), "AP8="),
        (AnyValue(), None),
    ],
)
def test_value_of_keeps_types_and_stays_json(value: AnyValue, expected: Any) -> None:
    assert value_of(value) == expected and type(value_of(value)) is type(expected)


def test_nested_values() -> None:
    value = AnyValue()
    value.array_value.values.extend([AnyValue(int_value=1), AnyValue(string_value="x")])
    inner = value.array_value.values.add()
    inner.kvlist_value.values.extend([kv("k", bool_value=True)])
    assert value_of(value) == [1, "x", {"k": True}]


def test_levels_cover_every_severity_number() -> None:
    names = {10: "debug", 20: "info", 30: "warning", 40: "error", 50: "critical"}
    got = [names[level_of(n)] for n in range(0, 26)]
    ranges = ["debug"] * 8 + ["info"] * 4 + ["warning"] * 4 + ["error"] * 4 + ["critical"] * 4
    assert got == ["info", *ranges, "info"]  # 0 (unset) and 25 (out of range) are info
    assert names[level_of(-3)] == "info"


def test_bodies() -> None:
    structured = AnyValue()
    structured.kvlist_value.values.extend([kv("a", int_value=1), kv("é", string_value="ü")])
    bodies = [
        AnyValue(string_value="plain"), AnyValue(int_value=7), AnyValue(bool_value=True),
        AnyValue(bytes_value=b"caf\xc3\xa9 \xff"), AnyValue(), structured,
    ]  # fmt: skip
    req = request([kv("cicd.pipeline.run.id", string_value="j")], *({"body": b} for b in bodies))
    msgs = [m.msg for m in map_request(req, NAMES) if isinstance(m, Mapped)]
    assert msgs == ["plain", "7", "true", "café \ufffd", "", '{"a":1,"é":"ü"}']


def test_the_record_wins_and_the_fallback_worker_is_not_repeated_in_fields() -> None:
    resource = [
        kv("cicd.pipeline.run.id", int_value=42),
        kv("cicd.pipeline.task.name", string_value="build"),
        kv("service.instance.id", string_value="pod-1"),
        kv("host.name", string_value="h"),
    ]
    req = request(
        resource,
        {"attributes": [kv("cicd.pipeline.task.name", string_value="test"), kv("n", int_value=1)]},
        {"attributes": [kv("cicd.worker.id", string_value="w-9")]},
        {"trace_id": bytes(range(16)), "span_id": bytes(range(8)), "time_unix_nano": 1_500_000},
    )
    first, second, third = map_request(req, NAMES)
    assert isinstance(first, Mapped) and isinstance(second, Mapped) and isinstance(third, Mapped)
    assert (first.job, first.step, first.worker) == ("42", "test", "pod-1")
    assert first.fields == {"n": 1, "resource": {"host.name": "h"}}
    assert (second.step, second.worker) == ("build", "w-9")
    assert second.fields == {"resource": {"service.instance.id": "pod-1", "host.name": "h"}}
    assert third.fields is not None and third.fields["trace_id"] == bytes(range(16)).hex()
    assert third.fields["span_id"] == "0001020304050607" and third.ts_ms == 1


def test_rejections_name_the_record() -> None:
    req = request(
        [],
        {"attributes": [kv("cicd.pipeline.run.id", string_value="j")]},
        {},
        {
            "attributes": [
                kv("cicd.pipeline.run.id", string_value="j"),
                kv("cicd.worker.id", string_value="w"),
            ]
        },
    )
    kept, no_job, no_step = map_request(req, NAMES)
    assert isinstance(kept, Mapped) and kept.index == 0 and kept.ts_ms is None
    assert isinstance(no_job, Rejected) and no_job.index == 1 and "no job" in no_job.reason
    assert isinstance(no_step, Rejected) and "worker 'w' without a step" in no_step.reason
