"""``POST /v1/logs`` (OTLP/HTTP logs) against a real redis-server: the real OpenTelemetry Python
SDK's records stored with the CI/CD conventions' job/step/worker, OTLP/JSON by hand, partial
success, auth per job, 503 + Retry-After, idempotency by logbroker.src/seq, and hostile bodies."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from gateway.api.auth import mint_token
from gateway.cli.redis_server import RedisServer
from gateway.otlp_wire import encode_status
from tests.support.fixture_types import Client, MakeGateway
from tests.support.helpers import read_job

# opentelemetry-sdk 1.39+ deprecates its LoggingHandler for opentelemetry-instrumentation-logging's;
# it is still the SDK's stdlib-logging bridge that most Python workers run today
pytestmark = pytest.mark.filterwarnings("ignore:`LoggingHandler` in `opentelemetry-sdk` is deprecated")
PROTOBUF = {"Content-Type": "application/x-protobuf"}
SECRET = "s" * 32
CICD = {
    "cicd.pipeline.run.id": "otel-1",
    "cicd.pipeline.name": "Nightly build",
    "cicd.pipeline.task.name": "compile",
    "cicd.worker.id": "w-1",
    "service.name": "builder",
}


# ---- building requests -----------------------------------------------------------------------


def any_value(value: Any) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, bytes):
        return AnyValue(bytes_value=value)
    if isinstance(value, list):
        out = AnyValue()
        out.array_value.values.extend(any_value(v) for v in value)
        return out
    if isinstance(value, dict):
        out = AnyValue()
        out.kvlist_value.values.extend(kvs(value))
        return out
    return AnyValue(string_value=value)


def kvs(attributes: dict[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=k, value=any_value(v)) for k, v in attributes.items()]


def record(msg: Any = "line", severity: int = 9, **attributes: Any) -> LogRecord:
    return LogRecord(
        time_unix_nano=1_764_345_600_123_456_789, severity_number=severity, body=any_value(msg),
        attributes=kvs(attributes),
    )  # fmt: skip


def export(resource: dict[str, Any], *records: LogRecord) -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    resource_logs.resource.attributes.extend(kvs(resource))
    resource_logs.scope_logs.add().log_records.extend(records)
    return request


async def post_pb(api: Client, request: ExportLogsServiceRequest | bytes, **headers: str) -> Any:
    body = request if isinstance(request, bytes) else request.SerializeToString()
    # a file object: aiohttp warns that a large bytes body sent at once holds up the event loop
    return await api.post("/v1/logs", data=io.BytesIO(body), headers={**PROTOBUF, **headers})


async def partial_of(resp: Any) -> tuple[int, str]:
    """(rejected_log_records, error_message) of a 200 protobuf answer."""
    assert resp.status == 200, await resp.read()
    assert resp.content_type == "application/x-protobuf"
    answer = ExportLogsServiceResponse.FromString(await resp.read())
    return answer.partial_success.rejected_log_records, answer.partial_success.error_message


async def status_of(resp: Any, status: int) -> str:
    """The message of a ``google.rpc.Status`` error answer, in the request's encoding."""
    body = await resp.read()
    assert resp.status == status, body
    if resp.content_type == "application/json":
        value = await resp.json()
        assert set(value) <= {"code", "message"}, value
        return str(value["message"])
    assert resp.content_type == "application/x-protobuf"
    return _status_message(body)


def _status_message(body: bytes) -> str:
    from gateway import otlp_wire

    status = otlp_wire._STATUS.FromString(body)
    assert status.code != 0
    return str(status.message)


# ---- the real Python SDK ---------------------------------------------------------------------


@pytest.fixture
def sdk_logger() -> Iterator[Any]:
    """A factory of (logger, provider) exporting to a gateway's /v1/logs, shut down at the end."""
    made: list[tuple[logging.Logger, LoggingHandler, LoggerProvider]] = []

    def make(
        url: str, resource: dict[str, Any], name: str = "otel-test"
    ) -> tuple[logging.Logger, LoggerProvider]:
        provider = LoggerProvider(resource=Resource.create(resource))
        provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter(endpoint=url, timeout=10)))
        handler = LoggingHandler(level=logging.DEBUG, logger_provider=provider)
        logger = logging.getLogger(f"{name}-{len(made)}")
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
        logger.addHandler(handler)
        made.append((logger, handler, provider))
        return logger, provider

    yield make
    for logger, handler, provider in made:
        logger.removeHandler(handler)
        provider.shutdown()


async def test_python_sdk_records_arrive_with_job_step_worker_level_and_fields(
    api: Client, redis_client: redis.Redis, sdk_logger: Any
) -> None:
    logger, provider = sdk_logger(str(api.make_url("/v1/logs")), CICD)
    tracer = TracerProvider().get_tracer("otel-test")
    logger.debug("resolving dependencies")
    logger.info(
        "compiling %d files", 12, extra={"files": 12, "ratio": 0.5, "cached": True, "tags": ["a", "b"]}
    )
    with tracer.start_as_current_span("link") as span:
        logger.warning("slow link")
    logger.error("step failed", extra={"cicd.pipeline.task.name": "test"})  # the record's attribute wins
    logger.critical("giving up")
    assert await asyncio.to_thread(provider.force_flush, 10_000)

    entries = read_job(redis_client, "otel-1")
    assert [e["msg"] for e in entries] == [
        "resolving dependencies", "compiling 12 files", "slow link", "step failed", "giving up",
    ]  # fmt: skip
    assert [e["level"] for e in entries] == ["debug", "info", "warning", "error", "critical"]
    assert [e["step"] for e in entries] == ["compile", "compile", "compile", "test", "compile"]
    assert {(e["job"], e["job_name"], e["worker"], e["kind"]) for e in entries} == {
        ("otel-1", "Nightly build", "w-1", "log")
    }
    assert [e["line"] for e in entries] == [1, 2, 3, 1, 4]
    fields = entries[1]["fields"]
    assert fields is not None
    assert (fields["files"], fields["ratio"], fields["cached"], fields["tags"]) == (12, 0.5, True, ["a", "b"])
    assert fields["resource"]["service.name"] == "builder"
    assert not set(CICD) - {"service.name"} & set(fields["resource"])  # mapped ones are not repeated
    assert "cicd.pipeline.task.name" not in (entries[3]["fields"] or {})
    link = entries[2]["fields"] or {}
    assert link["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert link["span_id"] == format(span.get_span_context().span_id, "016x")
    assert all(e["ts"].startswith("20") and e["src"] is None for e in entries)


async def test_python_sdk_without_cicd_worker_uses_service_instance_id(
    api: Client, redis_client: redis.Redis, sdk_logger: Any
) -> None:
    resource = {
        "cicd.pipeline.run.id": "otel-2",
        "cicd.pipeline.task.name": "s",
        "service.instance.id": "pod-7",
    }
    logger, provider = sdk_logger(str(api.make_url("/v1/logs")), resource)
    logger.info("hello")
    assert await asyncio.to_thread(provider.force_flush, 10_000)
    (entry,) = read_job(redis_client, "otel-2")
    assert (entry["step"], entry["worker"]) == ("s", "pod-7")
    assert "service.instance.id" not in (entry["fields"] or {}).get("resource", {})


# ---- OTLP/JSON by hand -----------------------------------------------------------------------


async def test_json_encoding_with_hex_ids_integer_enums_and_every_value_type(
    api: Client, redis_client: redis.Redis
) -> None:
    trace, span = "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174"
    body = {
        "resourceLogs": [{
            "resource": {"attributes": [
                {"key": "cicd.pipeline.run.id", "value": {"stringValue": "json-1"}},
                {"key": "host.name", "value": {"stringValue": "h1"}},
            ]},
            "scopeLogs": [{"scope": {"name": "x"}, "logRecords": [
                {"timeUnixNano": "1764345600123000000", "severityNumber": 13, "severityText": "WARN",
                 "body": {"stringValue": "first"}, "traceId": trace, "spanId": span,
                 "attributes": [
                     {"key": "as_string", "value": {"intValue": "9007199254740993"}},
                     {"key": "as_number", "value": {"intValue": 42}},
                     {"key": "d", "value": {"doubleValue": 1.5}},
                     {"key": "b", "value": {"boolValue": False}},
                     {"key": "arr", "value": {"arrayValue": {"values": [
                         {"intValue": "1"}, {"stringValue": "x"}]}}},
                     {"key": "map", "value": {"kvlistValue": {"values": [
                         {"key": "k", "value": {"intValue": 2}}]}}},
                 ],
                 "someFutureField": {"x": 1}},
                {"observedTimeUnixNano": "1764345601000000000", "severityNumber": 21,
                 "body": {"kvlistValue": {"values": [{"key": "event", "value": {"stringValue": "é"}},
                                                     {"key": "n", "value": {"intValue": "3"}}]}}},
                {"body": {"intValue": "7"}},
            ]}],
        }]
    }  # fmt: skip
    resp = await api.post("/v1/logs", json=body)
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "application/json"
    assert await resp.json() == {}  # full success: no partial_success
    first, second, third = read_job(redis_client, "json-1")
    assert (first["msg"], first["level"], first["ts"]) == ("first", "warning", "2025-11-28T16:00:00.123Z")
    assert first["fields"] == {
        "as_string": 9007199254740993, "as_number": 42, "d": 1.5, "b": False, "arr": [1, "x"],
        "map": {"k": 2},
        "trace_id": trace, "span_id": span, "resource": {"host.name": "h1"},
    }  # fmt: skip
    assert (second["msg"], second["level"]) == ('{"event":"é","n":3}', "critical")
    assert second["ts"] == "2025-11-28T16:00:01.000Z"  # observed time when time_unix_nano is unset
    assert (third["msg"], third["level"]) == ("7", "info")  # unset severity is info


@pytest.mark.parametrize(
    ("severity", "level"),
    [(0, "info"), (1, "debug"), (4, "debug"), (5, "debug"), (8, "debug"), (9, "info"), (12, "info"),
     (13, "warning"), (16, "warning"), (17, "error"), (20, "error"), (21, "critical"), (24, "critical"),
     (99, "info")],
)  # fmt: skip
async def test_severity_number_ranges(
    api: Client, redis_client: redis.Redis, severity: int, level: str
) -> None:
    resp = await post_pb(api, export({"cicd.pipeline.run.id": "sev"}, record(severity=severity)))
    assert await partial_of(resp) == (0, "")
    assert [e["level"] for e in read_job(redis_client, "sev")] == [level]


async def test_protobuf_gzip_body(api: Client, redis_client: redis.Redis) -> None:
    request = export({"cicd.pipeline.run.id": "gz"}, *(record(f"l{i}") for i in range(50)))
    resp = await post_pb(api, gzip.compress(request.SerializeToString()), **{"Content-Encoding": "gzip"})
    assert await partial_of(resp) == (0, "")
    assert [e["msg"] for e in read_job(redis_client, "gz")] == [f"l{i}" for i in range(50)]


# ---- partial success -------------------------------------------------------------------------


async def test_records_without_a_job_or_step_are_rejected_through_partial_success(
    api: Client, redis_client: redis.Redis
) -> None:
    request = export(
        {"service.name": "svc"},
        record("kept", **{"cicd.pipeline.run.id": "ps-1"}),
        record("no job"),
        record("worker, no step", **{"cicd.pipeline.run.id": "ps-1", "cicd.worker.id": "w"}),
        record("bad step", **{"cicd.pipeline.run.id": "ps-1", "cicd.pipeline.task.name": "a\nb"}),
        record("bad job", **{"cicd.pipeline.run.id": "has space"}),
        record(
            "also kept",
            **{"cicd.pipeline.run.id": "ps-1", "cicd.pipeline.task.name": "s", "cicd.worker.id": "w"},
        ),
    )
    rejected, message = await partial_of(await post_pb(api, request))
    assert rejected == 4
    assert message.startswith("4 of 6 log records rejected: record 1: no job")
    assert "record 2: worker 'w' without a step" in message
    assert "record 3: step: must not contain control characters" in message
    assert "record 4: job: must match" in message
    assert [e["msg"] for e in read_job(redis_client, "ps-1")] == ["kept", "also kept"]


async def test_a_request_whose_records_are_all_rejected_is_still_a_200(
    api: Client, redis_client: redis.Redis
) -> None:
    resp = await api.post(
        "/v1/logs",
        json={"resourceLogs": [{"scopeLogs": [{"logRecords": [{"body": {"stringValue": "x"}}] * 3}]}]},
    )
    assert resp.status == 200
    answer = await resp.json()
    assert answer["partialSuccess"]["rejectedLogRecords"] in ("3", 3)
    assert "no job" in answer["partialSuccess"]["errorMessage"]
    assert redis_client.dbsize() == 0


async def test_an_empty_request_is_a_full_success(api: Client) -> None:
    assert await partial_of(await post_pb(api, ExportLogsServiceRequest())) == (0, "")


async def test_a_huge_attribute_rejects_its_record_only(api: Client, redis_client: redis.Redis) -> None:
    request = export(
        {"cicd.pipeline.run.id": "huge"},
        record("big", blob="x" * 200_000),
        record("x" * 1_000_000),  # a huge message is clipped, not refused
        record("small"),
    )
    rejected, message = await partial_of(await post_pb(api, request))
    assert rejected == 1 and "record 0: fields" in message, message
    clipped, small = read_job(redis_client, "huge")
    assert "…[truncated: 1000000 bytes" in clipped["msg"] and small["msg"] == "small"


async def test_attribute_names_are_settings(make_gateway: MakeGateway, redis_client: redis.Redis) -> None:
    api = await make_gateway(
        otlp_job_attribute="ci.job", otlp_step_attribute="ci.step", otlp_worker_attribute="ci.w"
    )
    request = export(
        {"ci.job": "named", "ci.step": "s", "ci.w": "w2", "cicd.pipeline.run.id": "ignored"}, record()
    )
    assert await partial_of(await post_pb(api, request)) == (0, "")
    (entry,) = read_job(redis_client, "named")
    assert (entry["step"], entry["worker"]) == ("s", "w2")
    assert entry["fields"] == {"resource": {"cicd.pipeline.run.id": "ignored"}}


# ---- order, one script call per job ----------------------------------------------------------


async def test_jobs_interleaved_keep_their_order_with_one_script_call_each(
    api: Client, redis_client: redis.Redis
) -> None:
    records = [
        record(f"{job}-{i}", **{"cicd.pipeline.run.id": job}) for i in range(300) for job in ("a", "b", "c")
    ]
    await post_pb(api, export({}, record("warm", **{"cicd.pipeline.run.id": "warm"})))
    before = redis_client.info("commandstats")["cmdstat_evalsha"]["calls"]
    assert await partial_of(await post_pb(api, export({}, *records))) == (0, "")
    assert redis_client.info("commandstats")["cmdstat_evalsha"]["calls"] - before == 3
    for job in ("a", "b", "c"):
        assert [e["msg"] for e in read_job(redis_client, job)] == [f"{job}-{i}" for i in range(300)]


# ---- idempotency -----------------------------------------------------------------------------


async def test_logbroker_src_seq_make_a_retry_a_duplicate_and_other_content_a_conflict(
    api: Client, redis_client: redis.Redis
) -> None:
    def batch(prefix: str) -> ExportLogsServiceRequest:
        resource = {"cicd.pipeline.run.id": "idem", "logbroker.src": "go-worker-1"}
        return export(resource, *(record(f"{prefix}{i}", **{"logbroker.seq": i}) for i in range(1, 6)))

    assert await partial_of(await post_pb(api, batch("m"))) == (0, "")
    assert await partial_of(await post_pb(api, batch("m"))) == (0, "")  # an SDK retry: duplicates
    entries = read_job(redis_client, "idem")
    assert [(e["msg"], e["src"], e["seq"]) for e in entries] == [
        (f"m{i}", "go-worker-1", i) for i in range(1, 6)
    ]
    assert "logbroker.seq" not in (entries[0]["fields"] or {})
    rejected, message = await partial_of(await post_pb(api, batch("other")))
    assert rejected == 5 and "go-worker-1#1 of job 'idem': already stored with other content" in message
    assert len(read_job(redis_client, "idem")) == 5


async def test_a_seq_that_does_not_increase_is_rejected(api: Client, redis_client: redis.Redis) -> None:
    resource = {"cicd.pipeline.run.id": "seqs", "logbroker.src": "s"}
    request = export(resource, record("2", **{"logbroker.seq": 2}), record("1", **{"logbroker.seq": 1}))
    rejected, message = await partial_of(await post_pb(api, request))
    assert rejected == 1 and "record 1: seq: must increase per src and job: 1 after 2" in message
    assert [e["msg"] for e in read_job(redis_client, "seqs")] == ["2"]


async def test_records_after_the_job_ended_are_rejected(api: Client, redis_client: redis.Redis) -> None:
    done = await api.post("/v1/jobs/ended/logs", json=[{"msg": "", "kind": "end", "status": "completed"}])
    assert done.status == 200
    rejected, message = await partial_of(
        await post_pb(api, export({"cicd.pipeline.run.id": "ended"}, record()))
    )
    assert rejected == 1 and "job 'ended' has ended" in message


# ---- auth ------------------------------------------------------------------------------------


async def test_a_publish_token_is_checked_per_job(
    make_gateway: MakeGateway, redis_client: redis.Redis
) -> None:
    api = await make_gateway(auth_secret=SECRET)
    token = mint_token(SECRET, jobs="team-a-*", scopes=["publish"], ttl_s=60)
    auth = {"Authorization": f"Bearer {token}"}
    mixed = export(
        {},
        record("a", **{"cicd.pipeline.run.id": "team-a-1"}),
        record("b", **{"cicd.pipeline.run.id": "team-b-1"}),
    )
    rejected, message = await partial_of(await post_pb(api, mixed, **auth))
    assert rejected == 1 and "record 1: this token does not cover job 'team-b-1'" in message
    assert [e["msg"] for e in read_job(redis_client, "team-a-1")] == ["a"]
    assert read_job(redis_client, "team-b-1") == []

    other = export({"cicd.pipeline.run.id": "team-b-2"}, record())
    assert "forbidden: this token covers none" in await status_of(await post_pb(api, other, **auth), 403)
    reader = mint_token(SECRET, jobs="*", scopes=["read"], ttl_s=60)
    resp = await post_pb(api, other, Authorization=f"Bearer {reader}")
    assert "forbidden: this token lacks the 'publish' scope" in await status_of(resp, 403)
    resp = await post_pb(api, other)
    assert (await status_of(resp, 401)).startswith("unauthorized: ")  # a Status here too
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert read_job(redis_client, "team-b-2") == []


# ---- Redis down ------------------------------------------------------------------------------


async def test_redis_unavailable_is_a_503_with_retry_after(api: Client, redis_server: RedisServer) -> None:
    redis_server.stop()
    resp = await post_pb(api, export({"cicd.pipeline.run.id": "down"}, record()))
    assert resp.headers["Retry-After"] == "1"
    assert "redis_unavailable" in await status_of(resp, 503)
    resp = await api.post("/v1/logs", json={"resourceLogs": [{"resource": {"attributes": [
        {"key": "cicd.pipeline.run.id", "value": {"stringValue": "down"}}]},
        "scopeLogs": [{"logRecords": [{"body": {"stringValue": "x"}}]}]}]})  # fmt: skip
    assert resp.headers["Retry-After"] == "1"
    assert "redis_unavailable" in await status_of(resp, 503)


async def otlp_requests(api: Client, status: int) -> float:
    text = await (await api.get("/metrics")).text()
    for line in text.splitlines():
        if line.startswith(f'logbroker_otlp_requests_total{{status="{status}"}} '):
            return float(line.split()[-1])
    return 0.0


async def test_the_python_sdk_retries_a_503_and_nothing_is_lost(
    api: Client, redis_server: RedisServer, redis_client: redis.Redis, sdk_logger: Any
) -> None:
    """The exporter retries a 503 after its Retry-After with the same body: once Redis is back,
    every record is stored, once, in order."""
    logger, provider = sdk_logger(str(api.make_url("/v1/logs")), {**CICD, "cicd.pipeline.run.id": "retry-1"})
    redis_server.stop()
    for i in range(20):
        logger.info("line %d", i)
    flush = asyncio.ensure_future(asyncio.to_thread(provider.force_flush, 20_000))
    for _ in range(100):
        if await otlp_requests(api, 503):
            break
        await asyncio.sleep(0.05)
    assert await otlp_requests(api, 503) >= 1 and not flush.done()
    redis_server.start()
    assert await flush
    assert [e["msg"] for e in read_job(redis_client, "retry-1")] == [f"line {i}" for i in range(20)]
    assert await otlp_requests(api, 200) == 1


# ---- malformed and hostile bodies ------------------------------------------------------------


async def test_truncated_protobuf_is_a_400(api: Client, redis_client: redis.Redis) -> None:
    body = export({"cicd.pipeline.run.id": "cut"}, record("x" * 100)).SerializeToString()
    message = await status_of(await post_pb(api, body[:-10]), 400)
    assert message.startswith("invalid_body: the body is not a protobuf ExportLogsServiceRequest")
    assert redis_client.dbsize() == 0


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"[]", "must be a JSON object"),
        (b"{", "not valid JSON"),
        (b'{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"traceId": "zz"}]}]}]}', "traceId must be hex"),
        (b'{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"timeUnixNano": "soon"}]}]}]}', "OTLP/JSON"),
        (b'{"resourceLogs": {"x": 1}}', "OTLP/JSON"),
        (b'{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"timeUnixNano": NaN}]}]}]}', "not valid JSON"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
async def test_malformed_json_is_a_400_in_json(api: Client, body: bytes, why: str) -> None:
    resp = await api.post("/v1/logs", data=body, headers={"Content-Type": "application/json"})
    message = await status_of(resp, 400)
    assert message.startswith("invalid_body: ") and why in message, message


async def test_wrong_content_type_is_a_415(api: Client) -> None:
    resp = await api.post("/v1/logs", data=b"hello", headers={"Content-Type": "text/plain"})
    assert "unsupported_media_type" in await status_of(resp, 415)


async def test_gzip_bomb_and_oversized_bodies_are_413(make_gateway: MakeGateway) -> None:
    api = await make_gateway(max_body_bytes=64 * 1024, max_ingest_entries=100)
    bomb = gzip.compress(b"\x00" * (32 * 1024 * 1024))
    assert len(bomb) < 64 * 1024  # refused while inflating, not for its own size
    resp = await post_pb(api, bomb, **{"Content-Encoding": "gzip"})
    assert "body_too_large" in await status_of(resp, 413)
    assert "body_too_large" in await status_of(await post_pb(api, b"\x0a" * (65 * 1024)), 413)
    many = export({"cicd.pipeline.run.id": "many"}, *(record() for _ in range(101)))
    assert "too_many_entries" in await status_of(await post_pb(api, many), 413)


async def test_unknown_protobuf_fields_are_ignored(api: Client, redis_client: redis.Redis) -> None:
    body = export({"cicd.pipeline.run.id": "unknown"}, record("kept")).SerializeToString()
    unknown = b"\xfa\x3e\x03abc"  # field 999, length-delimited "abc": from a newer proto
    assert await partial_of(await post_pb(api, body + unknown)) == (0, "")
    assert [e["msg"] for e in read_job(redis_client, "unknown")] == ["kept"]


async def test_deeply_nested_values_do_not_crash(api: Client, redis_client: redis.Redis) -> None:
    value: dict[str, Any] = {"stringValue": "leaf"}
    for _ in range(30):
        value = {"kvlistValue": {"values": [{"key": "k", "value": value}]}}
    body = {"resourceLogs": [{"resource": {"attributes": [
        {"key": "cicd.pipeline.run.id", "value": {"stringValue": "deep"}}]},
        "scopeLogs": [{"logRecords": [
            {"body": {"stringValue": "x"}, "attributes": [{"key": "d", "value": value}]},
            {"body": value}]}]}]}  # fmt: skip
    resp = await api.post("/v1/logs", json=body)
    assert resp.status == 200, await resp.text()
    answer = await resp.json()
    assert "record 0: fields" in answer["partialSuccess"]["errorMessage"]  # deeper than 16 levels
    (entry,) = read_job(redis_client, "deep")
    assert entry["msg"].startswith('{"k":{"k":')  # a structured body is JSON text, any depth
    deeper = b'{"resourceLogs": [' * 5000
    message = await status_of(
        await api.post("/v1/logs", data=deeper, headers={"Content-Type": "application/json"}), 400
    )
    assert message.startswith("invalid_body")


def test_status_answer_is_google_rpc_status_wire_format() -> None:
    """Field 1 code (varint), field 2 message (bytes): google.rpc.Status as any client reads it."""
    assert encode_status(400, "bad", False) == b"\x08\x03\x12\x03bad"
    assert json.loads(encode_status(503, "later", True)) == {"code": 14, "message": "later"}
