"""``GET /v1/jobs`` and ``GET /v1/jobs/{job}`` against a real redis-server: the order a user sees,
paging that neither repeats nor skips a job (ties included), the status filter, expired jobs, and
meta totals that equal what the stream holds."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis

from broker import Keyspace, SyncPublisher
from gateway.cli.redis_server import RedisServer
from tests.support.fixture_types import Client
from tests.support.helpers import count_by, error_of, read_job
from tests.support.jobs import Line, publish_job, publish_steps

pytestmark = pytest.mark.server_matrix  # once per server (tests/conftest.py)


def touch(url: str, job: str, status: str | None = None, *, name: str | None = None) -> None:
    """One write to ``job``: a job-level status change (or a log line), then a pause, so that the
    next write lands in a later millisecond and the activity order is unambiguous."""
    line = Line("tick") if status is None else Line(status=status)
    publish_job(url, job, [line], name=name or f"Job {job}", type_="test", end=None)
    time.sleep(0.003)


async def list_all(api: Client, query: str, limit: int) -> tuple[list[str], int]:
    """Walk every page; returns the job ids in order and the number of requests made."""
    jobs: list[str] = []
    cursor: str | None = None
    for requests in range(1, 1000):
        url = f"/v1/jobs?limit={limit}{query}" + (f"&cursor={cursor}" if cursor else "")
        resp = await api.get(url)
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        assert len(body["jobs"]) <= limit
        jobs.extend(j["job"] for j in body["jobs"])
        cursor = body["next"]
        if cursor is None:
            return jobs, requests
    raise AssertionError("paging never ended")


async def test_jobs_are_listed_by_last_activity_newest_first(redis_server: RedisServer, api: Client) -> None:
    for job in ("a", "b", "c"):
        touch(redis_server.url, job, "running")
    resp = await api.get("/v1/jobs")
    assert resp.status == 200
    body = await resp.json()
    assert [j["job"] for j in body["jobs"]] == ["c", "b", "a"]
    assert body["next"] is None
    first = body["jobs"][0]
    assert set(first) == {"job", "name", "type", "status", "created_ms", "updated_ms", "ended_ms", "entries"}
    assert (first["name"], first["type"], first["status"], first["entries"]) == (
        "Job c",
        "test",
        "running",
        1,
    )
    assert first["ended_ms"] is None and first["created_ms"] <= first["updated_ms"]

    touch(redis_server.url, "a")  # new activity moves a job to the top
    body = await (await api.get("/v1/jobs")).json()
    assert [j["job"] for j in body["jobs"]] == ["a", "c", "b"]
    assert body["jobs"][0]["entries"] == 2


@pytest.mark.parametrize("tie", [1, 7], ids=["distinct", "ties"])
async def test_cursor_pages_cover_every_job_once_in_order_including_ties(
    redis_server: RedisServer, redis_client: redis.Redis, api: Client, tie: int
) -> None:
    jobs = [f"job-{i:02d}" for i in range(30)]
    with SyncPublisher(redis_server.url) as pub:
        for job in jobs:
            pub.job(job).info("hello")
    # Jobs active in the same millisecond tie on score: force groups of ``tie`` equal scores.
    ks = Keyspace()
    scores = {job: 1_000_000 + (i // tie) for i, job in enumerate(jobs)}
    for job, score in scores.items():
        redis_client.zadd(ks.job_keys(job)[2], {job: score})
    expected = sorted(jobs, key=lambda j: (scores[j], j), reverse=True)
    for limit in (1, 3, 7, 30, 1000):
        got, requests = await list_all(api, "", limit)
        assert got == expected, f"limit={limit}"
        assert requests == max(1, -(-len(jobs) // limit)), f"limit={limit}: a wasted last page"


async def test_status_filter_pages_through_non_matching_jobs(
    redis_server: RedisServer, redis_client: redis.Redis, api: Client
) -> None:
    with SyncPublisher(redis_server.url) as pub:
        for i in range(250):  # more than one internal round of candidates
            pub.job(f"ok-{i:03d}").end("completed")
    await asyncio.sleep(0.003)
    touch(redis_server.url, "bad-1", "failed")
    with SyncPublisher(redis_server.url) as pub:
        for i in range(250, 300):
            pub.job(f"ok-{i:03d}").end("completed")
    await asyncio.sleep(0.003)
    touch(redis_server.url, "bad-2", "failed")
    touch(redis_server.url, "run-1", "running")

    got, requests = await list_all(api, "&status=failed", 1)
    assert got == ["bad-2", "bad-1"]
    assert requests == 3, "each request looks at enough candidates to get past 250 non-matching jobs"
    body = await (await api.get("/v1/jobs?status=failed")).json()
    assert [(j["job"], j["status"]) for j in body["jobs"]] == [("bad-2", "failed"), ("bad-1", "failed")]
    assert body["next"] is None
    completed, _ = await list_all(api, "&status=completed", 40)
    assert len(completed) == len(set(completed)) == 300
    assert all(j.startswith("ok-") for j in completed)
    body = await (await api.get("/v1/jobs?status=paused")).json()
    assert body == {"jobs": [], "next": None}


async def test_jobs_whose_meta_expired_are_skipped_and_leave_the_index(
    redis_server: RedisServer, redis_client: redis.Redis, api: Client
) -> None:
    for job in ("keep", "gone"):
        touch(redis_server.url, job)
    ks = Keyspace()
    redis_client.delete(ks.meta("gone"))  # as if its TTL had run out
    body = await (await api.get("/v1/jobs")).json()
    assert [j["job"] for j in body["jobs"]] == ["keep"]
    assert redis_client.zscore(ks.job_keys("gone")[2], "gone") is None
    assert redis_client.zscore(ks.job_keys("keep")[2], "keep") is not None


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("limit=0", "invalid_parameter"),
        ("limit=1001", "invalid_parameter"),
        ("limit=ten", "invalid_parameter"),
        ("limit=-1", "invalid_parameter"),
        ("cursor=", "invalid_cursor"),
        ("cursor=garbage", "invalid_cursor"),
        ("cursor=123", "invalid_cursor"),
        ("cursor=abc:job", "invalid_cursor"),
        ("cursor=123:", "invalid_cursor"),
        ("cursor=123:bad%20job", "invalid_cursor"),
        ("cursor=99999999999999999999:job", "invalid_cursor"),
        ("status=", "invalid_status"),
        ("status=not%20a%20status", "invalid_status"),
        ("status=" + "x" * 65, "invalid_status"),
    ],
)
async def test_job_list_rejects_malformed_parameters(api: Client, query: str, code: str) -> None:
    error = await error_of(await api.get(f"/v1/jobs?{query}"), 400)
    assert error["code"] == code


async def test_job_meta_per_step_totals_equal_the_stream(
    redis_server: RedisServer, redis_client: redis.Redis, api: Client
) -> None:
    steps = {"zeta": (2, 11), "alpha": (3, 7), "mid": (1, 5)}  # first_id order is not name order
    publish_steps(redis_server.url, "mgr-1", steps, name="Generator", type_="manager")
    entries = read_job(redis_client, "mgr-1")
    resp = await api.get("/v1/jobs/mgr-1")
    assert resp.status == 200
    meta = await resp.json()
    head = ("job", "name", "type", "status", "entries", "job_entries", "first_id", "last_id", "end_id")
    assert [meta[k] for k in head] == [
        "mgr-1", "Generator", "manager", "completed", len(entries),
        sum(1 for e in entries if e["step"] is None), entries[0]["id"], entries[-1]["id"], entries[-1]["id"],
    ]  # fmt: skip
    assert meta["job_entries"] == 2
    assert meta["ended_ms"] is not None and meta["created_ms"] <= meta["updated_ms"]
    assert list(meta["steps"]) == ["zeta", "alpha", "mid"]
    per_step = count_by(entries, "step")
    per_worker = count_by(entries, "step", "worker")
    for name, step in meta["steps"].items():
        own = [e for e in entries if e["step"] == name]
        assert step["entries"] == per_step[(name,)] == len(own)
        assert [step["first_id"], step["last_id"], step["status"]] == [
            own[0]["id"],
            own[-1]["id"],
            "completed",
        ]
        workers, per = steps[name]
        assert set(step["workers"]) == {f"w{w}" for w in range(workers)}
        for worker, counts in step["workers"].items():
            assert counts == {"entries": per_worker[(name, worker)], "status": "completed"}
            assert counts["entries"] == per + 2  # its lines plus running/completed
    (src,) = meta["publishers"]
    assert meta["publishers"][src] == {"entries": len(entries), "last_seq": len(entries)}
    totals: dict[str, Any] = entries[-1]["fields"]["totals"]  # type: ignore[index]
    assert totals["steps"] == {name: step["entries"] for name, step in meta["steps"].items()}


async def test_job_meta_of_unknown_or_invalid_job(api: Client) -> None:
    error = await error_of(await api.get("/v1/jobs/nope"), 404)
    assert error["code"] == "job_not_found"
    for bad in ("bad%20job", "x" * 129, "a%2Fb", "%C3%A9t%C3%A9"):
        error = await error_of(await api.get(f"/v1/jobs/{bad}"), 400)
        assert error["code"] == "invalid_job", bad
