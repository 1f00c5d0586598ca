"""Masked secrets never reach Redis, on every write path: the raw bytes of every key the test's own
redis-server holds (stream entries, meta hashes, seqs hashes and fingerprint strings, the job
index) are scanned for each secret; the per-job count in meta and in ``GET /v1/jobs/{job}`` is
exact; a retried ingest request is still a duplicate (the fingerprint is the masked body's)."""

from __future__ import annotations

import logging
import multiprocessing
from typing import Any

import pytest
import redis

from broker import LogbrokerHandler, Publisher, SyncPublisher, bind
from broker.masking import MASK
from gateway.cli.redis_server import RedisServer
from tests.gateway.api.test_api_otlp import export, partial_of, post_pb, record
from tests.support.fixture_types import MakeGateway
from tests.support.helpers import read_job, read_meta

# Made-up credentials (none is real); the literal values a publisher is told to mask.
GIVEN = "p4ssw0rd-given-at-start"
ADDED = "tok-added-at-run-time"
SYNC_SECRET = "sync-publisher-s3cret"
AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
GHP = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
PEM_BODY = "MIIEowIBAAKCAQEAsecretkeymaterial"
PEM = f"-----BEGIN PRIVATE KEY-----\n{PEM_BODY}\n-----END PRIVATE KEY-----"
BEARER = "b3arer-t0ken-value"
CORP = "corp-123456"  # matched by the operator's LOGBROKER_MASK_PATTERNS


def stored_bytes(client: redis.Redis) -> bytes:
    """Every key name and value the server holds, raw: what an attacker with the dump would see."""
    out: list[bytes] = []
    for key in client.scan_iter(count=1000):
        out.append(key)
        kind = client.type(key)
        if kind == b"stream":
            for entry_id, fields in client.xrange(key):
                out.append(entry_id)
                for name, value in fields.items():
                    out += [name, value]
        elif kind == b"hash":
            for name, value in client.hgetall(key).items():
                out += [name, value]
        elif kind == b"string":
            out.append(client.get(key) or b"")
        elif kind == b"zset":
            out += [member for member, _ in client.zrange(key, 0, -1, withscores=True)]
        else:
            pytest.fail(f"a key of an unexpected type {kind!r}: {key!r}")
    return b"\x00".join(out)


def assert_not_stored(client: redis.Redis, *secrets: str) -> None:
    raw = stored_bytes(client)
    assert MASK.encode() in raw, "nothing was masked: the scan would prove nothing"
    for secret in secrets:
        assert secret.encode() not in raw, f"{secret!r} reached Redis"


async def test_the_async_publisher_masks_values_given_and_added_on_every_kind_of_entry(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    async with Publisher(redis_server.url, mask=[GIVEN]) as pub:
        job = pub.job("pub-1", name="Masked")
        worker = job.step("build").worker("w-1")
        await worker.info(f"login with {GIVEN}!", password=GIVEN, nested={"list": ["x", f"y{GIVEN}y"]})
        await job.status("running", f"env PASSWORD={GIVEN}", argv=[GIVEN])
        await pub.publish("pub-1", f"direct {GIVEN}", step="build", fields={"k": GIVEN})
        worker.mask(ADDED)  # ::add-mask:: from the worker that fetched the token
        await worker.warning(f"got {ADDED} and {GIVEN}")
        await job.end("completed", f"bye {ADDED}")
        report = await pub.flush()
    assert report.ok and report.delivered == 5
    entries = read_job(redis_client, "pub-1")
    assert entries[0]["msg"] == "login with [MASKED]!"
    assert entries[0]["fields"] == {"password": MASK, "nested": {"list": ["x", "y[MASKED]y"]}}
    assert entries[3]["msg"] == "got [MASKED] and [MASKED]"
    assert read_meta(redis_client, "pub-1").masked == 3 + 2 + 2 + 2 + 1
    assert_not_stored(redis_client, GIVEN, ADDED)


def test_the_sync_publisher_and_the_logging_handler_mask_too(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    logger = logging.getLogger("test_masking_stored")
    logger.propagate = False
    with SyncPublisher(redis_server.url) as pub:
        pub.mask(SYNC_SECRET)
        handler = LogbrokerHandler(pub)
        logger.addHandler(handler)
        try:
            with bind(job="sync-1", step="s", worker="w"):
                logger.warning("connecting with %s", SYNC_SECRET)
            pub.job("sync-1").step("s").info(f"again {SYNC_SECRET}", url=f"https://u:{SYNC_SECRET}@host")
        finally:
            logger.removeHandler(handler)
        assert pub.flush().ok
    assert [e["msg"] for e in read_job(redis_client, "sync-1")] == [
        "connecting with [MASKED]",
        "again [MASKED]",
    ]
    assert read_meta(redis_client, "sync-1").masked == 3
    assert_not_stored(redis_client, SYNC_SECRET)


_FORK_PUBLISHER: SyncPublisher | None = None


def _child_publishes() -> None:
    """In a forked child: the parent's publisher, reset there (new src, empty buffer)."""
    assert _FORK_PUBLISHER is not None
    _FORK_PUBLISHER.job("fork-1").info(f"child {GIVEN} {ADDED}")
    assert _FORK_PUBLISHER.flush().ok


def test_a_forked_child_masks_what_its_parent_was_told(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    global _FORK_PUBLISHER
    with SyncPublisher(redis_server.url, mask=[GIVEN]) as pub:
        pub.mask(ADDED)
        _FORK_PUBLISHER = pub
        child = multiprocessing.get_context("fork").Process(target=_child_publishes)
        child.start()
        child.join(30)
        _FORK_PUBLISHER = None
    assert child.exitcode == 0
    assert [e["msg"] for e in read_job(redis_client, "fork-1")] == ["child [MASKED] [MASKED]"]
    assert_not_stored(redis_client, GIVEN, ADDED)


def test_a_short_mask_value_is_refused_with_a_clear_error(redis_server: RedisServer) -> None:
    with pytest.raises(ValueError, match="at least 4 characters"):
        SyncPublisher(redis_server.url, mask=["abc"])
    pub = SyncPublisher(redis_server.url)
    with pytest.raises(ValueError, match="at least 4 characters"):
        pub.job("j").mask("ab")
    pub.close()


def ingest_body() -> list[dict[str, Any]]:
    return [
        {"msg": f"aws {AWS_KEY}", "src": "go:1", "seq": 1},
        {"msg": f"curl -H 'Authorization: Bearer {BEARER}'", "step": "s", "src": "go:1", "seq": 2},
        {
            "msg": "key follows",
            "fields": {"key": PEM, "deep": {"tokens": [GHP, {"jwt": JWT}]}},
            "src": "go:1",
            "seq": 3,
        },
        {"msg": f"customer {CORP}", "kind": "status", "status": "running", "step": "s"},
        {"msg": "nothing secret here", "fields": {"n": 1, "s": "plain"}},
    ]


async def test_json_ingest_masks_builtin_formats_and_operator_patterns(
    redis_client: redis.Redis, make_gateway: MakeGateway
) -> None:
    api = await make_gateway(mask_patterns=(r"corp-\d{6}",))
    resp = await api.post("/v1/jobs/ing-1/logs", json=ingest_body())
    assert resp.status == 200, await resp.text()
    entries = read_job(redis_client, "ing-1")
    assert [e["msg"] for e in entries] == [
        "aws [MASKED]",
        "curl -H 'Authorization: [MASKED]'",
        "key follows",
        "Status changed: running (job: ing-1, step: s): customer [MASKED]",
        "nothing secret here",
    ]
    assert entries[2]["fields"] == {"key": MASK, "deep": {"tokens": [MASK, {"jwt": MASK}]}}
    assert entries[4]["fields"] == {"n": 1, "s": "plain"}
    detail = await (await api.get("/v1/jobs/ing-1")).json()
    assert detail["masked"] == read_meta(redis_client, "ing-1").masked == 6

    again = await (await api.post("/v1/jobs/ing-1/logs", json=ingest_body()[:3])).json()
    assert (again["accepted"], again["duplicates"]) == (0, 3), "a retry is a duplicate, not a conflict"
    assert read_meta(redis_client, "ing-1").masked == 6, "duplicates are not counted again"
    assert_not_stored(redis_client, AWS_KEY, BEARER, PEM_BODY, GHP, JWT, CORP)


async def test_ndjson_ingest_masks_too_and_builtin_masking_can_be_turned_off(
    redis_client: redis.Redis, make_gateway: MakeGateway
) -> None:
    api = await make_gateway(mask_builtin=False, mask_patterns=(r"corp-\d{6}",))
    body = f'{{"msg": "{CORP} {AWS_KEY}"}}\n'
    resp = await api.post("/v1/jobs/nd-1/logs", data=body, headers={"Content-Type": "application/x-ndjson"})
    assert resp.status == 200, await resp.text()
    [entry] = read_job(redis_client, "nd-1")
    assert entry["msg"] == f"[MASKED] {AWS_KEY}"
    assert (await (await api.get("/v1/jobs/nd-1")).json())["masked"] == 1


async def test_without_masking_configured_nothing_is_counted(
    redis_client: redis.Redis, make_gateway: MakeGateway
) -> None:
    api = await make_gateway(mask_builtin=False)
    assert (await api.post("/v1/jobs/plain/logs", json=[{"msg": f"aws {AWS_KEY}"}])).status == 200
    assert read_job(redis_client, "plain")[0]["msg"] == f"aws {AWS_KEY}"
    detail = await (await api.get("/v1/jobs/plain")).json()
    assert detail["masked"] == 0 and "masked" not in redis_client.hgetall("logbroker:{plain}:meta")


async def test_otlp_ingest_masks_body_and_attributes_before_storing(
    redis_client: redis.Redis, make_gateway: MakeGateway
) -> None:
    api = await make_gateway(mask_patterns=(r"corp-\d{6}",))
    request = export(
        {"cicd.pipeline.run.id": "otlp-1", "service.name": f"svc {CORP}"},
        record(f"aws {AWS_KEY}", **{"cicd.pipeline.task.name": "s", "token": JWT, "nested": {"k": [GHP]}}),
        record({"structured": PEM}),
    )
    assert await partial_of(await post_pb(api, request)) == (0, "")
    first, second = read_job(redis_client, "otlp-1")
    assert first["msg"] == "aws [MASKED]"
    assert first["fields"] is not None and first["fields"]["token"] == MASK
    assert first["fields"]["nested"] == {"k": [MASK]}
    assert PEM_BODY not in second["msg"] and MASK in second["msg"]
    assert read_meta(redis_client, "otlp-1").masked >= 5
    assert_not_stored(redis_client, AWS_KEY, JWT, GHP, PEM_BODY, CORP)
