"""The bad-input battery (issue 5): one table of malformed requests across every route, each with
the status and error code a client must get, sent over real HTTP to a real gateway process.

Why one table against one long-lived process: the point is not only that each answer is right,
but that nothing a client can send leaves the gateway worse off. So every case goes to the same
process (raw bytes through ``http.client``, which sends paths, headers and bodies as given), and
``test_still_healthy_after_the_whole_battery`` replays the table before checking ``/readyz`` and a
normal publish + stream round trip. SSE injection gets its own test: newlines and SSE field names
are ingested where they are allowed (``msg``, ``fields``) and must come back as data, never as
events; where they are not (step, worker...) the table expects a 400.


"""

from __future__ import annotations

import gzip
import http.client
import json
import zlib
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest

from broker.client import LogEntry, follow_sync
from gateway.cli.redis_server import RedisServer
from tests.support.gateway_process import GatewayProcess
from tests.support.jobs import publish_steps
from tests.support.sse_client import parse

JSON = {"Content-Type": "application/json"}
NDJSON = {"Content-Type": "application/x-ndjson"}
MB = 1024 * 1024


@dataclass(frozen=True)
class Bad:
    """One request and the answer it must get (``code`` None: not a JSON error, see the case)."""

    method: str
    path: str
    status: int
    code: str | None
    headers: dict[str, Any] | None = None
    body: bytes | None = None


def entries(*objects: Any) -> bytes:
    return json.dumps(list(objects)).encode()


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"x": value}
    return value


LOGS, STREAM = "/v1/jobs/known/logs", "/v1/jobs/known/stream"
BIG = "x" * (10 * MB)


def gzip_bomb(inflated_mb: int) -> bytes:
    """A gzip body of ~1 KB per inflated MiB, made without holding the inflated bytes."""
    packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    spaces = b" " * MB
    parts = [packer.compress(b"[")] + [packer.compress(spaces) for _ in range(inflated_mb)]
    return b"".join([*parts, packer.compress(b"]"), packer.flush()])


BOMB = gzip_bomb(64)  # 64 KB that inflate to 64 MiB, four times the body limit


def raw(
    name: str,
    method: str,
    path: str,
    status: int,
    code: str | None,
    headers: dict[str, Any] | None = None,
    body: bytes | None = None,
    marks: Any = (),
) -> Any:
    return pytest.param(Bad(method, path, status, code, headers, body), id=name, marks=marks)


def get(name: str, path: str, status: int, code: str | None, marks: Any = (), **headers: Any) -> Any:
    """A GET; header names are given with ``_`` for ``-`` (``Last_Event_ID=...``)."""
    return raw(
        name, "GET", path, status, code, {k.replace("_", "-"): v for k, v in headers.items()}, None, marks
    )


def post(name: str, status: int, code: str | None, *objects: Any, marks: Any = ()) -> Any:
    """An ingest request of these entry objects as a JSON array."""
    return raw(name, "POST", LOGS, status, code, JSON, entries(*objects), marks)


def body(
    name: str, status: int, code: str, data: bytes, headers: dict[str, Any] = JSON, marks: Any = ()
) -> Any:
    """An ingest request of these exact bytes."""
    return raw(name, "POST", LOGS, status, code, headers, data, marks)


def ctype(value: str) -> dict[str, str]:
    return {"Content-Type": value}


INVALID = "invalid_parameter"
CASES: list[Any] = [
    # --- job ids in the path (percent-encoded control characters, unicode...), unknown routes
    get("space-in-job", "/v1/jobs/bad%20job", 400, "invalid_job"),
    get("job-129-chars", "/v1/jobs/" + "j" * 129, 400, "invalid_job"),
    get("unicode-job", "/v1/jobs/%C3%A9t%C3%A9/logs", 400, "invalid_job"),
    get("nul-in-job", "/v1/jobs/a%00b/logs", 400, "invalid_job"),
    get("lf-in-job", "/v1/jobs/a%0Ab/stream", 400, "invalid_job"),
    get("crlf-in-job", "/v1/jobs/a%0D%0Aset-cookie:x", 400, "invalid_job"),
    get("dot-dot-slash-job", "/v1/jobs/%2E%2E%2F%2E%2E%2Fetc", 400, "invalid_job"),
    get("non-utf8-job", "/v1/jobs/%FF%FE/logs", 400, "invalid_job"),
    raw("slash-in-job", "POST", "/v1/jobs/a%2Fb/logs", 400, "invalid_job", JSON, b'[{"msg":"m"}]'),
    get("unknown-job-meta", "/v1/jobs/nope", 404, "job_not_found"),
    get("unknown-job-logs", "/v1/jobs/nope/logs", 404, "job_not_found"),
    get("unknown-route", "/v1/nope", 404, "not_found"),
    raw("delete-job", "DELETE", "/v1/jobs/known", 405, "method_not_allowed"),
    raw("put-logs", "PUT", LOGS, 405, "method_not_allowed", JSON, b"[]"),
    raw("post-stream", "POST", STREAM, 405, "method_not_allowed", JSON, b"[]"),
    # --- the job list: cursor, limit, status
    get("cursor-garbage", "/v1/jobs?cursor=abc", 400, "invalid_cursor"),
    get("cursor-bad-job", "/v1/jobs?cursor=1:bad%20job", 400, "invalid_cursor"),
    get("cursor-20-digits", "/v1/jobs?cursor=" + "9" * 20 + ":j", 400, "invalid_cursor"),
    get("jobs-limit-0", "/v1/jobs?limit=0", 400, INVALID),
    get("jobs-limit-1001", "/v1/jobs?limit=1001", 400, INVALID),
    get("jobs-status", "/v1/jobs?status=not%20ok", 400, "invalid_status"),
    get("jobs-limit-superscript", "/v1/jobs?limit=%C2%B2", 400, INVALID),
    # --- replay: cursors, limits, enums, filters
    get("after-garbage", LOGS + "?after=abc", 400, "invalid_id"),
    get("before-negative", LOGS + "?before=-1", 400, "invalid_id"),
    get("after-2**64", LOGS + "?after=18446744073709551616-0", 400, "invalid_id"),
    get("after-three-parts", LOGS + "?after=1-2-3", 400, "invalid_id"),
    get("after-nul", LOGS + "?after=%00", 400, "invalid_id"),
    get("logs-limit-5001", LOGS + "?limit=5001", 400, INVALID),
    get("logs-limit-negative", LOGS + "?limit=-5", 400, INVALID),
    get("logs-limit-float", LOGS + "?limit=1e3", 400, INVALID),
    get("logs-limit-superscript", LOGS + "?limit=%C2%B2", 400, INVALID),
    get("order", LOGS + "?order=sideways", 400, INVALID),
    get("level", LOGS + "?level=loud", 400, "invalid_level"),
    get("kind-empty-item", LOGS + "?kind=log,,end", 400, "invalid_kind"),
    get("step-newline", LOGS + "?step=a%0Ab", 400, INVALID),
    get("worker-257-chars", LOGS + "?worker=" + "w" * 257, 400, INVALID),
    get("format", LOGS + "?format=xml", 400, INVALID),
    get("misspelled-filter", LOGS + "?levle=error", 400, "unknown_parameter"),
    get("repeated-limit", LOGS + "?limit=1&limit=abc", 400, "repeated_parameter"),
    get("repeated-step", LOGS + "?step=a&step=b", 400, "repeated_parameter"),
    get("meta-with-a-parameter", "/v1/jobs/known?verbose=1", 400, "unknown_parameter"),
    get("jobs-unknown-parameter", "/v1/jobs?sort=name", 400, "unknown_parameter"),
    get("stream-unknown-parameter", STREAM + "?since=1-0", 400, "unknown_parameter"),
    get("stream-repeated-after", STREAM + "?after=1-0&after=2-0", 400, "repeated_parameter"),
    raw(
        "ingest-unknown-parameter",
        "POST",
        LOGS + "?dry_run=1",
        400,
        "unknown_parameter",
        JSON,
        b'[{"msg":"m"}]',
    ),
    # --- the stream: start positions and filters
    get("stream-after-$$", STREAM + "?after=%24%24", 400, "invalid_id"),
    get("stream-tail-5001", STREAM + "?tail=5001", 400, INVALID),
    get("stream-tail-superscript", STREAM + "?tail=%C2%B2", 400, INVALID),
    get("stream-level-nul", STREAM + "?level=%00", 400, "invalid_level"),
    get("stream-kind-case", STREAM + "?kind=LOG", 400, "invalid_kind"),
    get("stream-tail-overridden", STREAM + "?after=1-0&tail=abc", 400, INVALID),
    # --- headers: Last-Event-ID garbage, Accept oddities, wrong Content-Type / Content-Encoding
    get("last-event-id-garbage", STREAM, 400, "invalid_id", Last_Event_ID="nope"),
    get("last-event-id-non-utf8", STREAM, 400, "invalid_id", Last_Event_ID=b"\xff\xfe"),
    get("last-event-id-list", STREAM, 400, "invalid_id", Last_Event_ID="1-0, 2-0"),
    get("last-event-id-21-digits", STREAM, 400, "invalid_id", Last_Event_ID="9" * 21),
    get("after-overridden", STREAM + "?after=x", 400, "invalid_id", Last_Event_ID="1-0"),
    get("accept-garbage-is-json", LOGS, 200, None, Accept="*/*;;;q=,,,;"),
    get("accept-sse-on-replay-is-json", LOGS, 200, None, Accept="text/event-stream"),
    get("ndjson-404-is-json", "/v1/jobs/nope/logs", 404, "job_not_found", Accept="application/x-ndjson"),
    body("ctype-text", 415, "unsupported_media_type", b'[{"msg":"m"}]', ctype("text/plain")),
    body("ctype-missing", 415, "unsupported_media_type", b'[{"msg":"m"}]', {}),
    body("ctype-latin1", 415, "unsupported_media_type", b"[]", ctype("application/json; charset=latin-1")),
    body(
        "ctype-multipart", 415, "unsupported_media_type", b"--x--", ctype("multipart/form-data; boundary=x")
    ),
    body(
        "content-encoding-garbage",
        400,
        "invalid_body",
        b"\x1f\x8b not gzip",
        {**JSON, "Content-Encoding": "gzip"},
    ),
    body(
        "content-encoding-unknown",
        415,
        "unsupported_media_type",
        b'[{"msg":"m"}]',
        {**JSON, "Content-Encoding": "evil"},
    ),
    body(
        "content-encoding-br",
        415,
        "unsupported_media_type",
        b'[{"msg":"m"}]',
        {**JSON, "Content-Encoding": "br"},
    ),
    body(
        "content-encoding-list",
        415,
        "unsupported_media_type",
        b"[]",
        {**JSON, "Content-Encoding": "gzip, evil"},
    ),
    body("gzip-bomb", 413, "body_too_large", BOMB, {**JSON, "Content-Encoding": "gzip"}),
    body("gzip-cut-short", 400, "invalid_body", BOMB[:1000], {**JSON, "Content-Encoding": "gzip"}),
    body("deflate-ok", 200, None, zlib.compress(b'[{"msg":"m"}]'), {**JSON, "Content-Encoding": "deflate"}),
    body("gzip-ok", 200, None, gzip.compress(b'[{"msg":"m"}]'), {**JSON, "Content-Encoding": "gzip"}),
    body(
        "gzip-two-members",
        200,
        None,
        gzip.compress(b'[{"msg":"a"}') + gzip.compress(b',{"msg":"b"}]'),
        {**JSON, "Content-Encoding": "gzip"},
    ),
    body(
        "gzip-trailing-garbage",
        400,
        "invalid_body",
        gzip.compress(b'[{"msg":"m"}]') + b"garbage",
        {**JSON, "Content-Encoding": "gzip"},
    ),
    # --- bodies: JSON, NDJSON, encodings, types, sizes
    body("json-truncated", 400, "invalid_json", b'[{"msg":'),
    body("json-with-bom", 400, "invalid_json", b"\xef\xbb\xbf" + entries({"msg": "m"})),
    body("json-nan", 400, "invalid_json", b'[{"msg": "m", "fields": {"x": NaN}}]'),
    body("json-nesting-100k", 400, "invalid_json", b"[" * 100_000),
    body("object-not-array", 400, "invalid_body", b'{"msg": "m"}'),
    body("empty-body", 400, "empty_body", b""),
    body("empty-array", 400, "empty_body", b"[]"),
    body("ndjson-truncated", 400, "invalid_json", b'{"msg": "a"}\n{"msg": "b"', NDJSON),
    body("ndjson-line-not-object", 400, "invalid_entry", b'{"msg": "a"}\n"just text"\n', NDJSON),
    body("body-not-utf8", 400, "invalid_encoding", b'[{"msg": "caf\xe9"}]'),
    body("ndjson-cut-utf8", 400, "invalid_encoding", b'{"msg": "\xc3"}\n', NDJSON),
    body("body-17MB", 413, "body_too_large", b"[" + b" " * (17 * MB) + b"]"),
    post("entries-not-objects", 400, "invalid_entry", 1, 2),
    post("msg-number", 400, "invalid_entry", {"msg": 5}),
    post("unknown-key", 400, "invalid_entry", {"msg": "m", "colour": "red"}),
    post("seq-2**53", 400, "invalid_entry", {"msg": "m", "src": "a", "seq": 2**53}),
    post("fields-depth-17", 400, "invalid_entry", {"msg": "m", "fields": nested(17)}),
    post("msg-10MB-is-cut-not-refused", 200, None, {"msg": BIG}),
    post("step-10MB", 400, "invalid_entry", {"msg": "m", "step": BIG}),
    post("fields-10MB", 400, "invalid_entry", {"msg": "m", "fields": {"f": BIG}}),
    post("10001-entries", 413, "too_many_entries", *[{"msg": ""}] * 10_001),
    post("step-lone-surrogate", 400, "invalid_entry", {"msg": "m", "step": "\ud800"}),
    post(
        "job-name-lone-surrogate",
        400,
        "invalid_entry",
        {"msg": "m", "job_name": "\udfff"},
    ),
    post("msg-fields-lone-surrogate-replaced", 200, None, {"msg": "\ud800", "fields": {"\udfff": "\ud800"}}),
    # --- SSE injection where names forbid it (msg and fields allow it: see the injection test)
    post("inject-step", 400, "invalid_entry", {"msg": "m", "step": "s\n\ndata: x"}),
    post("inject-worker", 400, "invalid_entry", {"msg": "m", "step": "s", "worker": "w\rid: 9-9"}),
    post("inject-job-name", 400, "invalid_entry", {"msg": "m", "job_name": "n\nevent: end"}),
    post("inject-parent", 400, "invalid_entry", {"msg": "m", "parent": "p\r\n\r\n"}),
    post("inject-status", 400, "invalid_entry", {"msg": "m", "kind": "status", "status": "ok\ndata: x"}),
    post("inject-src", 400, "invalid_entry", {"msg": "m", "src": "s\n", "seq": 1}),
]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """One gateway process (on its own redis-server) for the whole battery, as in production."""
    folder = tmp_path_factory.mktemp("battery")
    server = RedisServer(folder / "redis", appendonly=False).start()
    try:
        publish_steps(server.url, "known", {"s": (1, 3)}, end=None)
        process = GatewayProcess(server.url, folder / "gateway.log", heartbeat_s=0.2).start()
        try:
            yield process
        finally:
            process.stop()
    finally:
        server.stop()


@dataclass
class Answer:
    status: int
    content_type: str
    body: bytes
    headers: http.client.HTTPMessage

    def json(self) -> Any:
        return json.loads(self.body)


def send(
    base_url: str,
    method: str,
    path: str,
    headers: dict[str, Any] | None = None,
    body: bytes | None = None,
    *,
    read_stream: bool = False,
) -> Answer:
    """Exactly these bytes: ``http.client`` neither normalises the path nor re-encodes headers. An
    SSE answer is read to its end only with ``read_stream`` (a live stream never ends)."""
    url = urlsplit(base_url)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=30)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        with suppress(BrokenPipeError, ConnectionResetError):  # answered (413) before reading it all
            conn.endheaders(body)
        resp = conn.getresponse()
        ctype = resp.headers.get_content_type()
        content = resp.read() if read_stream or ctype != "text/event-stream" else b""
        return Answer(resp.status, ctype, content, resp.headers)
    finally:
        conn.close()


def check(answer: Answer, case: Bad) -> None:
    assert answer.status == case.status, answer.body[:500]
    if case.code is None:
        return
    assert answer.content_type == "application/json", answer.body[:500]
    error = answer.json()["error"]
    assert set(error) == {"code", "message"} and error["message"]
    assert error["code"] == case.code, error


@pytest.mark.parametrize("case", CASES)
def test_bad_request_gets_its_status_and_code(gateway: GatewayProcess, case: Bad) -> None:
    check(send(gateway.url, case.method, case.path, case.headers, case.body), case)


def test_the_battery_has_at_least_40_distinct_cases_over_every_route() -> None:
    cases = [param.values[0] for param in CASES]
    assert len({(c.method, c.path, repr(c.headers), c.body) for c in cases}) == len(cases) >= 40
    routes = {(c.method, c.path.split("?")[0].replace("known", "{job}")) for c in cases}
    for route in [("GET", "/v1/jobs"), ("GET", "/v1/jobs/{job}/logs"), ("POST", "/v1/jobs/{job}/logs")]:
        assert route in routes
    assert ("GET", "/v1/jobs/{job}/stream") in routes and ("DELETE", "/v1/jobs/{job}") in routes


INJECTIONS = [
    "data: forged\n\nid: 1-0\nevent: end\n\n",
    "line\rdata: x\r\rid: 2-0\r\r",
    "crlf\r\nevent: gap\r\ndata: {}\r\n\r\n",
    "\n\n\n\n",
    ": comment?\n\n",
    "retry: 1\n\n",
    "id: 9999999999999-0\n\n",
    "nul \x00 id: \x00\n\n",
    "unicode line breaks \u2028 \u2029 \x85 \x0b \x0c \x1c",
    "event: end",
]


def test_sse_injection_through_msg_and_fields_stays_data(gateway: GatewayProcess) -> None:
    """Newlines and SSE field names in every field that may hold them: each entry is exactly one
    event carrying them as data, the end entry ends the stream, nothing else is dispatched."""
    posted = [
        {"msg": text, "step": "s", "worker": "w", "fields": {text: text, "nested": {"list": [text]}}}
        for text in INJECTIONS
    ]
    posted.append({"msg": INJECTIONS[0], "kind": "end", "status": "completed"})
    answer = send(
        gateway.url,
        "POST",
        "/v1/jobs/inject/logs",
        NDJSON,
        b"\n".join(map(str.encode, map(json.dumps, posted))),
    )
    assert answer.status == 200, answer.body
    ids = answer.json()["ids"]
    assert len(ids) == len(posted)

    stream = send(
        gateway.url, "GET", "/v1/jobs/inject/stream", read_stream=True
    )  # the job has ended: the stream closes
    assert stream.status == 200 and stream.content_type == "text/event-stream"
    parsed = parse(stream.body)
    assert [e.event for e in parsed.events] == ["message"] * len(INJECTIONS) + ["end"]
    assert [e.id for e in parsed.events] == ids and parsed.last_id == ids[-1]
    got = [e.json() for e in parsed.events]
    assert [e["msg"] for e in got[:-1]] == INJECTIONS
    assert [e["fields"] for e in got[:-1]] == [p["fields"] for p in posted[:-1]]
    assert got[-1]["msg"].endswith(INJECTIONS[0]) and got[-1]["kind"] == "end"
    with follow_sync(gateway.url, "inject") as consumer:  # the consumer API reads the same
        assert [e.to_dict() for e in consumer if isinstance(e, LogEntry)] == got
    assert stream.body.count(b"\n\n") == 1 + len(posted)  # retry, then one blank line per event
    again = send(gateway.url, "GET", "/v1/jobs/inject/stream", {"Last-Event-ID": ids[-1]})
    assert again.status == 204


def test_still_healthy_after_the_whole_battery(gateway: GatewayProcess) -> None:
    """Replay every case (whatever it answers), then: the process runs, /readyz is 200, and a
    normal publish + stream round trip works."""
    for param in CASES:
        case: Bad = param.values[0]
        send(gateway.url, case.method, case.path, case.headers, case.body)
    assert gateway.process is not None and gateway.process.poll() is None
    ready = send(gateway.url, "GET", "/readyz")
    assert ready.status == 200 and ready.json()["status"] == "ready"
    body = entries(
        {"msg": "one", "step": "s", "worker": "w"}, {"msg": "two"}, {"msg": "", "kind": "end", "status": "ok"}
    )
    posted = send(gateway.url, "POST", "/v1/jobs/after-battery/logs", JSON, body)
    assert posted.status == 200 and posted.json()["accepted"] == 3
    stream = send(gateway.url, "GET", "/v1/jobs/after-battery/stream", read_stream=True)
    events = parse(stream.body).events
    assert [e.id for e in events] == posted.json()["ids"]
    assert [e.json()["msg"] for e in events[:2]] == ["one", "two"] and events[-1].event == "end"
