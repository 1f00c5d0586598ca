"""``POST /v1/jobs/{job}/logs`` against a real redis-server: JSON and NDJSON bodies stored as the
publishers store them, idempotent retries (also after a failure half-way), identifying status
lines, all-or-nothing validation, size limits, and a JSON error for every malformed request."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestClient

from broker import Keyspace
from broker.delivery import Outcome, write_async
from broker.outbox import Batch
from broker.script import Retention
from gateway.cli.redis_server import RedisServer
from tests.support.fixture_types import Client, MakeGateway
from tests.support.helpers import assert_exactly_once, assert_lines_contiguous, error_of, read_job, read_meta

pytestmark = pytest.mark.server_matrix  # once per server (tests/conftest.py)

NDJSON = {"Content-Type": "application/x-ndjson"}


async def post(api: TestClient[Any, Any], job: str, entries: Any, status: int = 200) -> dict[str, Any]:
    resp = await api.post(f"/v1/jobs/{job}/logs", json=entries)
    body: dict[str, Any] = await resp.json()
    assert resp.status == status, body
    return body


def nothing_stored(client: redis.Redis, job: str) -> bool:
    ks = Keyspace()
    stream, meta, index, seqs = ks.job_keys(job)
    return client.exists(stream, meta, seqs) == 0 and client.zscore(index, job) is None


async def metric(api: Client, name: str, label: str) -> float:
    text = await (await api.get("/metrics")).text()
    for line in text.splitlines():
        if line.startswith(f"{name}{{{label}}} "):
            return float(line.split()[-1])
    return 0.0


async def test_json_array_is_stored_like_a_publisher_would(
    redis_server: RedisServer, redis_client: redis.Redis, api: Client
) -> None:
    body = await post(
        api,
        "ext-1",
        [
            {
                "msg": "job line",
                "job_name": "External",
                "job_type": "batch",
                "ts": "2026-11-28T15:00:00.123Z",
            },
            {
                "msg": "w line",
                "step": "s1",
                "worker": "w-1",
                "parent": "p",
                "level": "warning",
                "fields": {"n": 1},
            },
            {"msg": "second", "step": "s1", "worker": "w-2", "level": "DEBUG", "src": "go:1", "seq": 1},
        ],
    )
    stored = read_job(redis_client, "ext-1")
    assert body == {"accepted": 3, "duplicates": 0, "ids": [e["id"] for e in stored]}
    first, second, third = stored
    assert (first["msg"], first["ts"], first["job_name"], first["job_type"], first["step"]) == (
        "job line", "2026-11-28T15:00:00.123Z", "External", "batch", None,
    )  # fmt: skip
    assert (second["step"], second["worker"], second["parent"], second["level"], second["fields"]) == (
        "s1", "w-1", "p", "warning", {"n": 1},
    )  # fmt: skip
    assert (third["level"], third["src"], third["seq"], third["line"]) == ("debug", "go:1", 1, 2)
    assert (second["src"], second["seq"], first["line"], second["line"]) == (None, None, 1, 1)
    meta = read_meta(redis_client, "ext-1")
    assert (meta.name, meta.type, meta.entries, meta.steps["s1"].entries) == ("External", "batch", 3, 2)


async def test_ndjson_body_with_blank_lines_and_crlf(
    redis_server: RedisServer, redis_client: redis.Redis, api: Client
) -> None:
    lines = [json.dumps({"msg": f"line {i}", "step": "s", "src": "nd", "seq": i + 1}) for i in range(5)]
    raw = ("\r\n".join(lines[:3]) + "\n\n  \n" + "\n".join(lines[3:])).encode()
    resp = await api.post("/v1/jobs/nd/logs", data=raw, headers=NDJSON)
    body = await resp.json()
    assert resp.status == 200, body
    stored = read_job(redis_client, "nd")
    assert [e["msg"] for e in stored] == [f"line {i}" for i in range(5)]
    assert body["ids"] == [e["id"] for e in stored] and body["accepted"] == 5


async def test_repost_with_same_src_seq_is_reported_as_duplicates_and_stored_once(
    redis_server: RedisServer, redis_client: redis.Redis, api: Client
) -> None:
    entries = [{"msg": f"m{i}", "step": "s", "src": "host:1", "seq": i} for i in range(1, 6)]
    first = await post(api, "idem", entries)
    assert (first["accepted"], first["duplicates"], len(first["ids"])) == (5, 0, 5)
    again = await post(api, "idem", entries)
    assert again == {"accepted": 0, "duplicates": 5, "ids": []}
    more = [*entries, *({"msg": f"m{i}", "step": "s", "src": "host:1", "seq": i} for i in range(6, 9))]
    third = await post(api, "idem", more)
    assert (third["accepted"], third["duplicates"]) == (3, 5)
    stored = read_job(redis_client, "idem")
    assert [e["msg"] for e in stored] == [f"m{i}" for i in range(1, 9)]
    assert_exactly_once(stored)
    assert_lines_contiguous(stored)
    assert third["ids"] == [e["id"] for e in stored[5:]]
    meta = read_meta(redis_client, "idem")
    assert (meta.publishers["host:1"].entries, meta.publishers["host:1"].last_seq) == (8, 8)
    assert await metric(api, "logbroker_ingest_entries_total", 'result="accepted"') == 8
    assert await metric(api, "logbroker_ingest_entries_total", 'result="duplicate"') == 10
    assert await metric(api, "logbroker_ingest_requests_total", 'status="200"') == 3


async def test_status_and_end_entries_carry_the_identifying_line(
    redis_server: RedisServer, redis_client: redis.Redis, api: Client
) -> None:
    ident = {"job_name": "Go Job", "job_type": "manager"}
    await post(
        api,
        "go-42",
        [
            {"msg": "", "kind": "status", "status": "running", **ident},
            {"msg": "", "kind": "status", "status": "running", "step": "build", "worker": "w-3", **ident},
            {"msg": "compiled", "kind": "status", "status": "done", "step": "build", **ident},
            {"msg": "", "kind": "end", "status": "completed", **ident},
        ],
    )
    job_status, worker_status, step_status, end = read_job(redis_client, "go-42")
    assert job_status["msg"] == 'Status changed: running (job: go-42 "Go Job", type: manager)'
    assert worker_status["msg"] == (
        'Status changed: running (job: go-42 "Go Job", type: manager, step: build, worker: w-3)'
    )
    assert (
        step_status["msg"]
        == 'Status changed: done (job: go-42 "Go Job", type: manager, step: build): compiled'
    )
    assert (end["kind"], end["status"], end["msg"]) == (
        "end",
        "completed",
        'Job finished: completed (job: go-42 "Go Job", type: manager)',
    )
    assert end["fields"] is not None and end["fields"]["totals"]["steps"] == {"build": 2}
    meta = read_meta(redis_client, "go-42")
    assert (meta.status, meta.end_id) == ("completed", end["id"])
    assert meta.steps["build"].status == "done" and meta.steps["build"].workers["w-3"].status == "running"


async def test_one_bad_entry_rejects_the_whole_request(
    redis_server: RedisServer, redis_client: redis.Redis, api: Client
) -> None:
    entries: list[dict[str, Any]] = [{"msg": f"ok {i}"} for i in range(5)]
    entries[2]["level"] = "loud"
    error = await error_of(await api.post("/v1/jobs/bad/logs", json=entries), 400)
    assert error["code"] == "invalid_entry"
    assert error["message"].startswith("entry 2: level: must be one of debug, info, warning, error, critical")
    assert nothing_stored(redis_client, "bad")
    ndjson = "\n".join(json.dumps(e) for e in entries).encode()
    error = await error_of(await api.post("/v1/jobs/bad/logs", data=ndjson, headers=NDJSON), 400)
    assert error["message"].startswith("entry 2 (line 3): level:")
    assert nothing_stored(redis_client, "bad")
    assert await metric(api, "logbroker_ingest_entries_total", 'result="rejected"') == 10
    assert await metric(api, "logbroker_ingest_requests_total", 'status="400"') == 2


async def test_a_body_over_the_size_limit_is_413_and_stores_nothing(
    redis_client: redis.Redis, make_gateway: MakeGateway
) -> None:
    api = await make_gateway(max_body_bytes=1024)
    small = [{"msg": "x" * 100}]
    assert (await post(api, "small", small))["accepted"] == 1
    big = [{"msg": "x" * 100} for _ in range(20)]
    error = await error_of(await api.post("/v1/jobs/big/logs", json=big), 413)
    assert error["code"] == "body_too_large"
    assert nothing_stored(redis_client, "big")
    assert await metric(api, "logbroker_ingest_requests_total", 'status="413"') == 1


async def test_too_many_entries_is_413(redis_client: redis.Redis, make_gateway: MakeGateway) -> None:
    api = await make_gateway(max_ingest_entries=3)
    assert (await post(api, "three", [{"msg": "m"}] * 3))["accepted"] == 3
    for data, headers in (
        (json.dumps([{"msg": "m"}] * 4).encode(), {"Content-Type": "application/json"}),
        (b'{"msg": "m"}\n' * 4, NDJSON),
    ):
        error = await error_of(await api.post("/v1/jobs/four/logs", data=data, headers=headers), 413)
        assert error["code"] == "too_many_entries"
    assert nothing_stored(redis_client, "four")


async def test_big_requests_are_written_in_batches_in_order(
    redis_server: RedisServer, redis_client: redis.Redis, api: Client
) -> None:
    pad = "x" * 200  # a body of more than 256 KiB: parsed and validated off the event loop
    entries: list[dict[str, Any]] = [
        {"msg": f"m{i}", "step": f"s{i % 2}", "src": "bulk", "seq": i + 1, "fields": {"pad": pad}}
        for i in range(2500)
    ]
    entries[1700]["job_name"] = "Named in the second batch"
    bad = [*entries[:2400], {**entries[2400], "level": "loud"}, *entries[2401:]]
    error = await error_of(await api.post("/v1/jobs/bulk/logs", json=bad), 400)
    assert error["message"].startswith("entry 2400: level: must be one of")
    assert nothing_stored(redis_client, "bulk")
    body = await post(api, "bulk", entries)
    stored = read_job(redis_client, "bulk")
    assert body["accepted"] == len(stored) == 2500 and body["ids"] == [e["id"] for e in stored]
    assert [e["msg"] for e in stored] == [f"m{i}" for i in range(2500)]
    assert assert_lines_contiguous(stored) == {"s0": 1250, "s1": 1250}
    assert read_meta(redis_client, "bulk").name == "Named in the second batch"


async def test_retry_after_a_failure_half_way_stores_every_entry_once(
    redis_server: RedisServer, redis_client: redis.Redis, api: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0

    async def fail_second_batch(client: Any, batches: Sequence[Batch], retention: Retention) -> list[Outcome]:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise redis.ConnectionError("connection lost")
        return await write_async(client, batches, retention)

    monkeypatch.setattr("gateway.api.ingest.write_async", fail_second_batch)
    entries = [{"msg": f"m{i}", "src": "retry", "seq": i + 1} for i in range(2500)]
    resp = await api.post("/v1/jobs/half/logs", json=entries)
    error = await error_of(resp, 503)
    assert error["code"] == "redis_unavailable" and resp.headers["Retry-After"] == "1"
    assert "1000 entries of this request were stored" in error["message"]
    assert len(read_job(redis_client, "half")) == 1000, "what is stored is a prefix of the request"
    body = await post(api, "half", entries)
    assert (body["accepted"], body["duplicates"]) == (1500, 1000)
    stored = read_job(redis_client, "half")
    assert [e["seq"] for e in stored] == list(range(1, 2501))


async def test_redis_down_is_503_with_retry_after(redis_server: RedisServer, api: Client) -> None:
    redis_server.stop()
    resp = await api.post("/v1/jobs/down/logs", json=[{"msg": "m", "src": "a", "seq": 1}])
    error = await error_of(resp, 503)
    assert error["code"] == "redis_unavailable"
    assert resp.headers["Retry-After"] == "1"


ENTRY_ERRORS = [
    ({"level": "info"}, "entry 0: msg: is required"),
    ({"msg": 5}, "entry 0: msg: must be a string"),
    ({"msg": "m", "colour": "red"}, "entry 0: 'colour': unknown key"),
    ({"msg": "m", "id": "1-0"}, "entry 0: 'id': unknown key"),
    ({"msg": "m", "level": "loud"}, "entry 0: level: must be one of"),
    ({"msg": "m", "level": True}, "entry 0: level:"),
    ({"msg": "m", "kind": "trace"}, "entry 0: kind: must be one of log, status, end"),
    ({"msg": "m", "kind": "status"}, "entry 0: status:"),
    ({"msg": "m", "kind": "end"}, "entry 0: status:"),
    ({"msg": "m", "kind": "status", "status": "not ok!"}, "entry 0: status:"),
    ({"msg": "m", "worker": "w"}, "entry 0: step: worker 'w' needs its step"),
    ({"msg": "m", "step": ""}, "entry 0: step: must not be empty"),
    ({"msg": "m", "step": "a\nb"}, "entry 0: step: must not contain control characters"),
    ({"msg": "m", "parent": 3}, "entry 0: parent: must be a string"),
    ({"msg": "m", "job_name": "x" * 257}, "entry 0: job_name: is 257 characters long"),
    ({"msg": "m", "job_type": ["t"]}, "entry 0: job_type: must be a string"),
    ({"msg": "m", "fields": [1]}, "entry 0: fields: must be an object"),
    ({"msg": "m", "fields": {"a": "x" * 70_000}}, "entry 0: fields: packed size exceeds"),
    ({"msg": "m", "ts": "yesterday"}, "entry 0: ts: not an ISO-8601 timestamp"),
    ({"msg": "m", "ts": 1764345600}, "entry 0: ts: must be an ISO-8601 string"),
    ({"msg": "m", "ts": "1969-12-31T23:59:59Z"}, "entry 0: ts: must not be before 1970"),
    ({"msg": "m", "src": "a"}, "entry 0: seq: src and seq go together"),
    ({"msg": "m", "seq": 1}, "entry 0: src: src and seq go together"),
    ({"msg": "m", "src": "a", "seq": 0}, "entry 0: seq: must be an integer 1.."),
    ({"msg": "m", "src": "a", "seq": "1"}, "entry 0: seq: must be an integer 1.."),
    ({"msg": "m", "src": "a", "seq": 1.0}, "entry 0: seq: must be an integer 1.."),
    ({"msg": "m", "src": "a", "seq": True}, "entry 0: seq: must be an integer 1.."),
    ({"msg": "m", "src": "a", "seq": 2**53}, "entry 0: seq: must be an integer 1.."),
    ({"msg": "m", "src": "", "seq": 1}, "entry 0: src: must not be empty"),
    ({"msg": "m", "src": "a\tb", "seq": 1}, "entry 0: src: must not contain control characters"),
    ("just a string", "entry 0: entry: must be a JSON object, got str"),
]


@pytest.mark.parametrize(("entry", "message"), ENTRY_ERRORS)
async def test_each_invalid_entry_is_a_400_naming_it(
    redis_client: redis.Redis, api: Client, entry: Any, message: str
) -> None:
    error = await error_of(await api.post("/v1/jobs/v/logs", json=[entry]), 400)
    assert error["code"] == "invalid_entry"
    assert error["message"].startswith(message), error["message"]
    assert nothing_stored(redis_client, "v")


async def test_seqs_must_increase_per_src_within_a_request(redis_client: redis.Redis, api: Client) -> None:
    entries = [
        {"msg": "a", "src": "x", "seq": 5},
        {"msg": "b", "src": "y", "seq": 1},
        {"msg": "c", "src": "x", "seq": 5},
    ]
    error = await error_of(await api.post("/v1/jobs/v/logs", json=entries), 400)
    assert error["message"] == "entry 2: seq: must increase per src: 5 after 5"
    assert nothing_stored(redis_client, "v")


@pytest.mark.parametrize(
    ("data", "content_type", "status", "code", "fragment"),
    [
        (b"[]", "application/json", 400, "empty_body", "empty array"),
        (b"", "application/json", 400, "empty_body", "no entries"),
        (b"\n \n", "application/x-ndjson", 400, "empty_body", "no entries"),
        (b'{"msg": "m"}', "application/json", 400, "invalid_body", "JSON array"),
        (b'[{"msg": "m"},', "application/json", 400, "invalid_json", "not valid JSON"),
        (b'[{"msg": "m", "fields": {"x": NaN}}]', "application/json", 400, "invalid_json", "NaN"),
        (b"[" * 100_000, "application/json", 400, "invalid_json", "not valid JSON"),
        (b'{"msg": "a"}\n{"msg": "b"}\n{"msg": \n', "application/x-ndjson", 400, "invalid_json", "line 3"),
        (b'{"msg": "a"}\n[1]\n', "application/x-ndjson", 400, "invalid_entry", "entry 1 (line 2): entry:"),
        (b'[{"msg": "caf\xe9"}]', "application/json", 400, "invalid_encoding", "not UTF-8"),
        (b'[{"msg": "m"}]', "text/plain", 415, "unsupported_media_type", "application/json"),
        (b'[{"msg": "m"}]', "", 415, "unsupported_media_type", "application/json"),
        (b'[{"msg": "m"}]', "application/json; charset=latin-1", 415, "unsupported_media_type", "UTF-8"),
        (b"msg=m", "application/x-www-form-urlencoded", 415, "unsupported_media_type", "x-ndjson"),
    ],
)
async def test_malformed_bodies_are_rejected(
    redis_client: redis.Redis,
    api: Client,
    data: bytes,
    content_type: str,
    status: int,
    code: str,
    fragment: str,
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    error = await error_of(await api.post("/v1/jobs/v/logs", data=data, headers=headers), status)
    assert error["code"] == code
    assert fragment in error["message"]
    assert nothing_stored(redis_client, "v")


async def test_an_invalid_job_id_is_400(api: Client) -> None:
    for bad in ("bad%20job", "x" * 129, "%C3%A9"):
        error = await error_of(await api.post(f"/v1/jobs/{bad}/logs", json=[{"msg": "m"}]), 400)
        assert error["code"] == "invalid_job"
