"""OTLP/HTTP bodies: the request decoded, the answer and error ``Status`` encoded, by the
``opentelemetry-proto`` package (docs/design.md §5, ``POST /v1/logs``).

OTLP/JSON is protobuf's JSON mapping with two differences the spec names: enums are integers
(``json_format`` takes those) and ``traceId``/``spanId`` are hex, not base64. The hex ids are
turned into base64 before ``json_format.ParseDict``, so the one decoder of the package reads both
encodings. Unknown fields are ignored in both, as the spec asks of a receiver.

Errors are ``google.rpc.Status`` (the spec: "the response body for all HTTP 4xx and HTTP 5xx
responses MUST be a Protobuf-encoded Status message" in the request's encoding). The message is
built from its descriptor in a private pool, so neither googleapis-common-protos is needed nor
does it clash with that package's ``google.rpc.Status`` when both are loaded.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)

from broker.errors import LogbrokerError

__all__ = ["OTLP_LOGS_PATH", "PROTOBUF", "BadOtlp", "decode_request", "encode_response", "encode_status"]

PROTOBUF = "application/x-protobuf"
OTLP_LOGS_PATH = "/v1/logs"  # OTLP/HTTP's default path for logs
_ID_KEYS = (("traceId", "trace_id"), ("spanId", "span_id"))


class BadOtlp(LogbrokerError):
    """The body is not an ``ExportLogsServiceRequest`` in the encoding its content type names."""


def decode_request(body: bytes, json_body: bool) -> ExportLogsServiceRequest:
    return _decode_json(body) if json_body else _decode_protobuf(body)


def _decode_protobuf(body: bytes) -> ExportLogsServiceRequest:
    try:
        return ExportLogsServiceRequest.FromString(body)
    except (DecodeError, RecursionError) as e:
        raise BadOtlp(f"the body is not a protobuf ExportLogsServiceRequest: {e}") from None


def _decode_json(body: bytes) -> ExportLogsServiceRequest:
    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    try:
        value = json.loads(body.decode("utf-8"), parse_constant=constant)
    except UnicodeDecodeError as e:
        raise BadOtlp(f"the body is not UTF-8: byte {e.start} is invalid") from None
    except (ValueError, RecursionError) as e:
        raise BadOtlp(f"the body is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        kind = type(value).__name__
        raise BadOtlp(f"the body must be a JSON object (an ExportLogsServiceRequest), not {kind}")
    _hex_ids_to_base64(value)
    try:
        return json_format.ParseDict(value, ExportLogsServiceRequest(), ignore_unknown_fields=True)
    except (json_format.ParseError, RecursionError, TypeError, ValueError) as e:
        raise BadOtlp(f"the body is not an OTLP/JSON ExportLogsServiceRequest: {e}") from None


def _items(obj: object, *keys: str) -> list[Any]:
    """The list under the first of ``keys`` present (lowerCamelCase, or the proto field name)."""
    if not isinstance(obj, dict):
        return []
    for key in keys:
        if key in obj:
            value = obj[key]
            return value if isinstance(value, list) else []
    return []


def _hex_ids_to_base64(request: dict[str, Any]) -> None:
    """In place: what ParseDict does not check (a wrong shape) it reports itself afterwards."""
    for resource_logs in _items(request, "resourceLogs", "resource_logs"):
        for scope_logs in _items(resource_logs, "scopeLogs", "scope_logs"):
            for i, record in enumerate(_items(scope_logs, "logRecords", "log_records")):
                if not isinstance(record, dict):
                    continue
                for keys in _ID_KEYS:
                    for key in keys:
                        if isinstance(record.get(key), str):
                            record[key] = _base64_of_hex(record[key], key, i)


def _base64_of_hex(text: str, key: str, index: int) -> str:
    try:
        return base64.b64encode(bytes.fromhex(text)).decode("ascii")
    except (ValueError, binascii.Error):
        raise BadOtlp(f"logRecords[{index}].{key} must be hex (OTLP/JSON), got {text!r:.60}") from None


def encode_response(rejected: int, error_message: str, json_body: bool) -> bytes:
    """Full success is an empty response; otherwise ``partial_success`` says how many and why."""
    response = ExportLogsServiceResponse()
    if rejected or error_message:
        response.partial_success.rejected_log_records = rejected
        response.partial_success.error_message = error_message
    return _encode(response, json_body)


def _encode(message: Message, json_body: bool) -> bytes:
    if json_body:
        return json_format.MessageToJson(message, indent=None, ensure_ascii=False).encode("utf-8")
    return message.SerializeToString()


def _status_class() -> type[Message]:
    """``google.rpc.Status`` (code, message; ``details`` left out: never sent)."""
    file = descriptor_pb2.FileDescriptorProto(
        name="logbroker/rpc_status.proto", package="google.rpc", syntax="proto3"
    )
    status = file.message_type.add(name="Status")
    label, int32, string = (
        descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
        descriptor_pb2.FieldDescriptorProto.TYPE_INT32,
        descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
    )
    status.field.add(name="code", number=1, label=label, type=int32, json_name="code")
    status.field.add(name="message", number=2, label=label, type=string, json_name="message")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("google.rpc.Status"))


_STATUS = _status_class()
# gRPC codes by HTTP status (the spec leaves Status.code optional; they help a reader of the body)
_GRPC_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 409: 10, 413: 8, 415: 3, 429: 8, 500: 13, 503: 14}


def encode_status(http_status: int, message: str, json_body: bool) -> bytes:
    status = _STATUS(code=_GRPC_CODES.get(http_status, 2), message=message)
    return _encode(status, json_body)
