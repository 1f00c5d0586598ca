"""``GET /v1/jobs/{job}/logs`` against a real redis-server: pages that chain with ``next`` into the
whole job exactly once, in order, both ways; filters over pages (and past the scan cap); the NDJSON
download of one step; and a JSON 400/404 for every malformed request."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis

from broker import Entry, SyncPublisher
from broker.constants import LEVELS
from gateway.cli.redis_server import RedisServer
from tests.support.fixture_types import Client, MakeGateway
from tests.support.helpers import error_of, read_job, read_meta
from tests.support.jobs import publish_steps

pytestmark = pytest.mark.server_matrix  # once per server (tests/conftest.py)

STEPS = {"build": (2, 9), "test": (3, 6)}


async def walk(api: Client, job: str, query: str, order: str = "asc") -> tuple[list[dict[str, Any]], int]:
    """Follow ``next`` to the end; returns every entry received and the number of pages."""
    bound = "after" if order == "asc" else "before"
    got: list[dict[str, Any]] = []
    cursor: str | None = None
    for pages in range(1, 100_000):
        url = f"/v1/jobs/{job}/logs?order={order}{query}" + (f"&{bound}={cursor}" if cursor else "")
        resp = await api.get(url)
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        assert set(body) == {"entries", "next", "gap", "reset"} and body["gap"] is None, "nothing was trimmed"
        assert body["reset"] is None
        got.extend(body["entries"])
        cursor = body["next"]
        if cursor is None:
            return got, pages
    raise AssertionError("paging never ended")


def ids(entries: list[Any]) -> list[str]:
    return [e["id"] for e in entries]


def wanted(entries: list[Entry], step: str | None = None, min_level: str = "debug") -> list[Entry]:
    """What a filter must return: matching entries, and the end entry whatever the filter."""
    return [
        e
        for e in entries
        if e["kind"] == "end"
        or ((step is None or e["step"] == step) and LEVELS[e["level"]] >= LEVELS[min_level])
    ]


@pytest.mark.slow
@pytest.mark.server_matrix(first_only=True)  # 20 s of paging logic; the ranges it reads run on all
async def test_pages_walk_a_100k_entry_job_both_ways_without_gap_or_duplicate(
    redis_server: RedisServer, redis_client: redis.Redis, api: Client
) -> None:
    started = time.monotonic()
    with SyncPublisher(redis_server.url) as pub:
        job = pub.job("big", name="Big", type="manager")
        workers = [job.step("high_volume").worker(f"w{w}") for w in range(3)]
        for i in range(100_000):
            workers[i % 3].info(f"entry {i}", i=i)
    stored = ids(read_job(redis_client, "big"))
    assert len(stored) == 100_000

    got, pages = await walk(api, "big", "&limit=5000", "asc")
    assert ids(got) == stored
    assert pages == 20
    assert [e["fields"]["i"] for e in got] == list(range(100_000))
    got, pages = await walk(api, "big", "&limit=5000", "desc")
    assert ids(got) == stored[::-1]
    assert pages == 20
    assert time.monotonic() - started < 30


async def test_pages_chain_and_next_is_null_exactly_at_the_end(
    redis_server: RedisServer, api: Client
) -> None:
    with SyncPublisher(redis_server.url) as pub:
        for i in range(20):
            pub.job("j").info(f"line {i}")
    resp = await api.get("/v1/jobs/j/logs?limit=5")
    assert resp.content_type == "application/json"
    first = await resp.json()
    assert [e["msg"] for e in first["entries"]] == [f"line {i}" for i in range(5)]
    assert first["next"] == first["entries"][-1]["id"]
    entry = first["entries"][0]
    assert set(entry) == set(Entry.__annotations__)
    assert (entry["job"], entry["line"], entry["level"], entry["kind"], entry["seq"]) == (
        "j",
        1,
        "info",
        "log",
        1,
    )

    for order in ("asc", "desc"):
        got, pages = await walk(api, "j", "&limit=5", order)
        assert [e["msg"] for e in got] == [
            f"line {i}" for i in (range(20) if order == "asc" else range(19, -1, -1))
        ]
        assert pages == 4, "20 entries in pages of 5 are 4 pages, the last one with next=null"
    default = await (await api.get("/v1/jobs/j/logs")).json()
    assert len(default["entries"]) == 20 and default["next"] is None


async def test_after_and_before_bound_the_range_exclusively(redis_server: RedisServer, api: Client) -> None:
    with SyncPublisher(redis_server.url) as pub:
        for i in range(12):
            pub.job("j").info(f"line {i}")
    every = ids((await (await api.get("/v1/jobs/j/logs")).json())["entries"])
    body = await (await api.get(f"/v1/jobs/j/logs?after={every[3]}&before={every[10]}")).json()
    assert ids(body["entries"]) == every[4:10] and body["next"] is None
    body = await (
        await api.get(f"/v1/jobs/j/logs?after={every[3]}&before={every[10]}&order=desc&limit=4")
    ).json()
    assert ids(body["entries"]) == every[9:5:-1] and body["next"] == every[6]
    body = await (await api.get(f"/v1/jobs/j/logs?after={every[-1]}")).json()
    assert body == {"entries": [], "next": None, "gap": None, "reset": None}
    # the extreme ids are valid cursors, not a Redis error
    for query in ("after=18446744073709551615-18446744073709551615", "before=0-0", "before=0"):
        resp = await api.get(f"/v1/jobs/j/logs?{query}")
        assert resp.status == 200, query
        assert await resp.json() == {"entries": [], "next": None, "gap": None, "reset": None}


async def test_filters_over_pages_return_every_match_once(
    redis_server: RedisServer, redis_client: redis.Redis, make_gateway: MakeGateway
) -> None:
    publish_steps(redis_server.url, "j", STEPS)
    entries = read_job(redis_client, "j")
    api = await make_gateway(page_entries=7)
    for order in ("asc", "desc"):
        got, _ = await walk(api, "j", "&step=test&level=warning&limit=3", order)
        expected = ids(wanted(entries, "test", "warning"))
        assert ids(got) == (expected if order == "asc" else expected[::-1])
    got, _ = await walk(api, "j", "&worker=w1&limit=4")
    assert ids(got) == ids([e for e in entries if e["worker"] == "w1" or e["kind"] == "end"])
    got, _ = await walk(api, "j", "&kind=status&limit=4")
    statuses = [e for e in entries if e["kind"] in ("status", "end")]
    assert ids(got) == ids(statuses) and len(statuses) == 2 * (2 + 3) + 2 * 2 + 1
    got, _ = await walk(api, "j", "&kind=log,status&level=error&limit=100")
    assert ids(got) == ids(wanted(entries, min_level="error"))


async def test_a_sparse_filter_answers_after_the_scan_cap_and_the_client_continues(
    redis_server: RedisServer, redis_client: redis.Redis, make_gateway: MakeGateway
) -> None:
    with SyncPublisher(redis_server.url) as pub:
        job = pub.job("sparse")
        for i in range(300):
            job.step("rare" if i in (5, 150, 299) else "common").info(f"line {i}")
    api = await make_gateway(page_entries=4)  # 20 pages of 4 = 80 entries scanned per request at most
    first = await (await api.get("/v1/jobs/sparse/logs?step=rare&limit=10")).json()
    assert [e["msg"] for e in first["entries"]] == ["line 5"]
    stored = read_job(redis_client, "sparse")
    assert first["next"] == stored[79]["id"], "next is the last id scanned"
    one = await (await api.get("/v1/jobs/sparse/logs?step=rare&limit=1")).json()
    assert [e["msg"] for e in one["entries"]] == ["line 5"]
    assert one["next"] == stored[7]["id"], "a full answer stops at the end of the page it filled"
    got, pages = await walk(api, "sparse", "&step=rare&limit=10")
    assert [e["msg"] for e in got] == ["line 5", "line 150", "line 299"]
    assert pages == 4  # 300 entries / 80 per request


async def test_ndjson_download_of_one_step_is_complete(
    redis_server: RedisServer, redis_client: redis.Redis, make_gateway: MakeGateway
) -> None:
    publish_steps(redis_server.url, "mgr:7", {"build": (2, 40), "test": (4, 30)})
    api = await make_gateway(page_entries=16)
    resp = await api.get("/v1/jobs/mgr:7/logs?step=test", headers={"Accept": "application/x-ndjson"})
    assert resp.status == 200
    assert resp.content_type == "application/x-ndjson"
    assert resp.headers["Content-Disposition"] == 'attachment; filename="mgr:7-test.ndjson"'
    text = await resp.text()
    assert text.endswith("\n")
    lines = [json.loads(line) for line in text.splitlines()]
    meta = read_meta(redis_client, "mgr:7")
    step_lines = [e for e in lines if e["step"] == "test"]
    assert len(step_lines) == meta.steps["test"].entries == 4 * (30 + 2) + 2
    assert ids(lines) == ids(wanted(read_job(redis_client, "mgr:7"), "test"))
    assert lines[-1]["kind"] == "end" and lines[-1]["fields"]["totals"]["steps"]["test"] == len(step_lines)
    assert [e["line"] for e in step_lines] == list(range(1, len(step_lines) + 1))

    whole = await api.get("/v1/jobs/mgr:7/logs", headers={"Accept": "application/json, application/x-ndjson"})
    assert whole.headers["Content-Disposition"] == 'attachment; filename="mgr:7.ndjson"'
    assert ids([json.loads(line) for line in (await whole.text()).splitlines()]) == ids(
        read_job(redis_client, "mgr:7")
    )
    assert meta.entries == len((await whole.text()).splitlines())

    link = await api.get(
        "/v1/jobs/mgr:7/logs?step=test&format=ndjson"
    )  # what the viewer's download link asks
    assert link.content_type == "application/x-ndjson"
    assert [json.loads(line) for line in (await link.text()).splitlines()] == lines
    plain = await api.get("/v1/jobs/mgr:7/logs?format=json", headers={"Accept": "application/x-ndjson"})
    assert plain.content_type == "application/json"


async def test_ndjson_download_honours_limit_order_and_names_odd_steps_safely(
    redis_server: RedisServer, api: Client
) -> None:
    with SyncPublisher(redis_server.url) as pub:
        for i in range(30):
            pub.job("j").step('étape "1"').info(f"line {i}")
    nd = {"Accept": "application/x-ndjson"}
    resp = await api.get("/v1/jobs/j/logs?limit=7&order=desc", headers=nd)
    assert [json.loads(x)["msg"] for x in (await resp.text()).splitlines()] == [
        f"line {i}" for i in range(29, 22, -1)
    ]
    resp = await api.get("/v1/jobs/j/logs?step=%C3%A9tape%20%221%22", headers=nd)
    assert len((await resp.text()).splitlines()) == 30
    assert resp.headers["Content-Disposition"] == (
        "attachment; filename=\"j-_tape__1_.ndjson\"; filename*=UTF-8''j-%C3%A9tape%20%221%22.ndjson"
    )
    json_wanted = await api.get(
        "/v1/jobs/j/logs", headers={"Accept": "application/x-ndjson;q=0, application/json"}
    )
    assert json_wanted.content_type == "application/json"


async def test_unknown_job_is_404_and_an_invalid_job_is_400(api: Client) -> None:
    for headers in ({}, {"Accept": "application/x-ndjson"}):
        error = await error_of(await api.get("/v1/jobs/nope/logs", headers=headers), 404)
        assert error["code"] == "job_not_found"
        error = await error_of(await api.get("/v1/jobs/bad%20job/logs", headers=headers), 400)
        assert error["code"] == "invalid_job"


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("after=abc", "invalid_id"),
        ("after=", "invalid_id"),
        ("after=1-2-3", "invalid_id"),
        ("after=-1", "invalid_id"),
        ("after=$", "invalid_id"),
        ("after=99999999999999999999-0", "invalid_id"),
        ("before=1.5", "invalid_id"),
        ("before=18446744073709551616-0", "invalid_id"),
        ("limit=0", "invalid_parameter"),
        ("limit=5001", "invalid_parameter"),
        ("limit=abc", "invalid_parameter"),
        ("limit=", "invalid_parameter"),
        ("order=up", "invalid_parameter"),
        ("order=", "invalid_parameter"),
        ("order=ASC", "invalid_parameter"),
        ("level=loud", "invalid_level"),
        ("kind=trace", "invalid_kind"),
        ("kind=log,", "invalid_kind"),
        ("step=", "invalid_parameter"),
        ("step=" + "s" * 257, "invalid_parameter"),
        ("worker=a%0Ab", "invalid_parameter"),
        ("format=xml", "invalid_parameter"),
        ("format=", "invalid_parameter"),
    ],
)
async def test_replay_rejects_malformed_parameters(
    redis_server: RedisServer, api: Client, query: str, code: str
) -> None:
    with SyncPublisher(redis_server.url) as pub:
        pub.job("j").info("exists")
    for headers in ({}, {"Accept": "application/x-ndjson"}):
        error = await error_of(await api.get(f"/v1/jobs/j/logs?{query}", headers=headers), 400)
        assert error["code"] == code


async def test_pages_are_bounded_in_bytes_and_next_continues(make_gateway: MakeGateway) -> None:
    """1,000 entries of 65 KB control characters (JSON-escaped to ~390 KB each) made one
    ``logs?limit=500`` answer 186 MiB: a page now stops past ``replay_max_bytes``."""
    client = await make_gateway(replay_max_bytes=1024 * 1024)
    heavy = "\x01" * 60_000  # 6 bytes of JSON each: 360 KB per entry
    for seq in range(1, 41):  # one per request: a client's body over 1 MiB warns (aiohttp)
        body = [{"msg": heavy, "src": "big", "seq": seq}]
        assert (await client.post("/v1/jobs/heavy/logs", json=body)).status == 200
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        resp = await client.get("/v1/jobs/heavy/logs?limit=500" + (f"&after={cursor}" if cursor else ""))
        raw = await resp.read()
        pages += 1
        assert len(raw) < 1024 * 1024 + 400_000, f"{len(raw)} bytes in one page"
        page = json.loads(raw)
        seen += [e["seq"] for e in page["entries"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == list(range(1, 41)) and pages >= 10, "every entry once, in order, over many pages"
    download = await client.get("/v1/jobs/heavy/logs?format=ndjson")
    assert [json.loads(line)["seq"] for line in (await download.text()).splitlines()] == list(range(1, 41))
