"""``GET /v1/jobs`` and ``GET /v1/jobs/{job}``: which jobs exist, and what one job holds (docs/design.md §5).

The job index is one sorted set per partition (score = last activity in ms, member = job id), so
the list merges all partitions in one pipelined round trip per page. Its order is (score, job id)
descending, and the opaque cursor ``<score>:<job>`` names the last job returned: the next page
starts strictly after it, so paging never repeats or skips a job that did not move meanwhile.
When a token's pattern hides jobs and a page ends on one of those, the cursor names it by a keyed
hash (``<score>:~<hmac>``), resolved among the jobs of that millisecond: a cursor never tells a
client the id of a job its token does not cover.

Meta comes from the job's meta hash, whose counters the write script keeps exact (docs/design.md §10): a
job's and each step's totals are one ``HGETALL``, never a scan of the stream.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Any, cast

from aiohttp import web

from broker.entry import check_job_id, check_status
from broker.errors import InvalidEntry
from broker.meta import JobMeta, StepMeta, parse_meta

from ..errors import bad_request, not_found
from ..ids import from_redis
from .auth import AUTH, Grant
from .params import int_param, job_of
from .state import GATEWAY, Gateway

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
_MAX_ROUNDS = 20  # index pages looked at per request when a status filter skips jobs
_MIN_FETCH = 100  # with a status filter, read at least this many candidates per round
_NO_ID = (2**64, 0)  # steps without a first id sort last

Position = tuple[int, str]  # (score, job): the index order, compared descending


async def list_jobs(request: web.Request) -> web.Response:
    """Jobs by last activity, newest first: ``limit``, ``cursor``, ``status``. With auth on, only the
    jobs the token's pattern covers: others are skipped like a status filter skips, so paging works."""
    gw = request.app[GATEWAY]
    grant: Grant | None = request.get(AUTH)
    only = None if grant is None or grant.all_jobs else grant
    limit = int_param(request.query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    cursor = await _resolve(gw, _cursor_of(request.query.get("cursor")))
    status = _status_of(request.query.get("status"))
    found: list[dict[str, Any]] = []
    for _ in range(_MAX_ROUNDS):
        want = limit - len(found)
        fetch = want if status is None and only is None else max(want, _MIN_FETCH)
        candidates, exhausted = await _candidates(gw, cursor, fetch)
        visible = candidates if only is None else [p for p in candidates if only.covers(p[1])]
        metas = await _metas(gw, visible)
        for position, meta in zip(visible, metas, strict=True):
            if meta is not None and (status is None or meta.status == status):
                found.append(_summary(meta))
                if len(found) == limit:
                    more = not exhausted or position != visible[-1]
                    return _page(found, position if more else None)
        cursor = candidates[-1] if candidates else cursor
        if exhausted:
            return _page(found, None)
    if cursor is not None and only is not None and not only.covers(cursor[1]):
        cursor = _hidden(gw, cursor)
    return _page(found, cursor)


async def get_job(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    job = job_of(request)
    raw = cast(dict[bytes, bytes], await gw.redis.hgetall(gw.keyspace.meta(job)))
    meta = parse_meta(job, raw)
    if meta is None:
        raise not_found(job)
    return web.json_response(_detail(meta))


def _page(jobs: list[dict[str, Any]], after: Position | None) -> web.Response:
    return web.json_response({"jobs": jobs, "next": None if after is None else f"{after[0]}:{after[1]}"})


_HIDDEN = "~"  # not a job-id character: marks a hashed position
_TIES_TOP = "\x7f"  # sorts after every job id: "before every job of this millisecond"


def _digest(gw: Gateway, job: str) -> str:
    secret = gw.settings.auth_secret
    key = secret.get_secret_value().encode() if secret is not None else b""
    return hmac.new(key, job.encode(), hashlib.sha256).hexdigest()[:32]


def _hidden(gw: Gateway, position: Position) -> Position:
    return position[0], _HIDDEN + _digest(gw, position[1])


async def _resolve(gw: Gateway, position: Position | None) -> Position | None:
    """A hashed position back to the job of that millisecond it names; when that job has moved
    since (or expired), the page starts at the top of the millisecond: a repeat, never a skip."""
    if position is None or not position[1].startswith(_HIDDEN):
        return position
    score, wanted = position[0], position[1][1:]
    pipe = gw.redis.pipeline(transaction=False)
    for p in range(gw.keyspace.partitions):
        pipe.zrangebyscore(gw.keyspace.index(p), score, score)
    replies: list[list[bytes]] = await pipe.execute()
    for member in (m.decode() for reply in replies for m in reply):
        if hmac.compare_digest(_digest(gw, member), wanted):
            return score, member
    return score, _TIES_TOP


def _cursor_of(raw: str | None) -> Position | None:
    if raw is None:
        return None
    score, sep, job = raw.partition(":")
    try:
        if not sep or not score.isdigit() or len(score) > 19:
            raise ValueError("malformed")
        if job.startswith(_HIDDEN) and len(job) == 33 and all(c in "0123456789abcdef" for c in job[1:]):
            return int(score), job
        return int(score), check_job_id(job)
    except (ValueError, InvalidEntry):
        message = f"cursor must be a value from a previous 'next', got {raw!r:.80}"
        raise bad_request("invalid_cursor", message) from None


def _status_of(raw: str | None) -> str | None:
    if raw is None:
        return None
    try:
        return check_status(raw)
    except InvalidEntry as e:
        raise bad_request("invalid_status", str(e)) from None


async def _candidates(gw: Gateway, after: Position | None, count: int) -> tuple[list[Position], bool]:
    """The next ``count`` jobs of the merged index strictly after ``after``, and whether the index
    ends there. Per partition: the jobs with a lower score, plus those tied with the cursor's score
    that sort after its job id (ties are jobs active in the same millisecond: few)."""
    ks = gw.keyspace
    top = "+inf" if after is None else f"({after[0]}"
    pipe = gw.redis.pipeline(transaction=False)
    for p in range(ks.partitions):  # one more than needed tells whether a partition has more
        pipe.zrevrangebyscore(ks.index(p), top, "-inf", start=0, num=count + 1, withscores=True)
        if after is not None:
            pipe.zrevrangebyscore(ks.index(p), after[0], after[0], withscores=True)
    replies: list[list[tuple[bytes, float]]] = await pipe.execute()
    step = 1 if after is None else 2
    full = any(len(replies[i]) > count for i in range(0, len(replies), step))
    merged = {(int(score), member.decode()) for reply in replies for member, score in reply}
    if after is not None:
        merged = {pos for pos in merged if pos < after}
    ordered = sorted(merged, reverse=True)
    return ordered[:count], not full and len(ordered) <= count


async def _metas(gw: Gateway, positions: list[Position]) -> list[JobMeta | None]:
    """Meta of each job; a job whose meta has expired leaves the index (its next write re-adds it)."""
    if not positions:
        return []
    pipe = gw.redis.pipeline(transaction=False)
    for _, job in positions:
        pipe.hgetall(gw.keyspace.meta(job))
    raws: list[dict[bytes, bytes]] = await pipe.execute()
    metas = [parse_meta(job, raw) for (_, job), raw in zip(positions, raws, strict=True)]
    expired = [job for (_, job), meta in zip(positions, metas, strict=True) if meta is None]
    if expired:
        pipe = gw.redis.pipeline(transaction=False)
        for job in expired:
            pipe.zrem(gw.keyspace.job_keys(job)[2], job)
        await pipe.execute()
        log.info("removed %d expired jobs from the job index", len(expired))
    return metas


def _summary(meta: JobMeta) -> dict[str, Any]:
    return {
        "job": meta.job,
        "name": meta.name,
        "type": meta.type,
        "status": meta.status,
        "created_ms": meta.created_ms,
        "updated_ms": meta.updated_ms,
        "ended_ms": meta.ended_ms,
        "entries": meta.entries,
    }


def _detail(meta: JobMeta) -> dict[str, Any]:
    steps = sorted(meta.steps.items(), key=lambda kv: (_id_key(kv[1].first_id), kv[0]))
    return {
        **_summary(meta),
        "first_id": meta.first_id,
        "last_id": meta.last_id,
        "end_id": meta.end_id,
        "job_entries": meta.job_entries,
        "masked": meta.masked,
        "steps": {name: _step(step) for name, step in steps},
        "publishers": {
            src: {"entries": pub.entries, "last_seq": pub.last_seq} for src, pub in meta.publishers.items()
        },
    }


def _step(step: StepMeta) -> dict[str, Any]:
    return {
        "entries": step.entries,
        "status": step.status,
        "first_id": step.first_id,
        "last_id": step.last_id,
        "workers": {w: {"entries": m.entries, "status": m.status} for w, m in step.workers.items()},
    }


def _id_key(raw: str | None) -> tuple[int, int]:
    if raw is None:
        return _NO_ID
    try:
        return from_redis(raw)
    except ValueError:
        return _NO_ID
