"""A seq is a duplicate only if it was stored, with the same content (docs/design.md §3, issue 13.11).

Against a real redis-server: seqs stored out of order are all kept; a stored seq sent again with
other content is a conflict, refused and reported, never silently "a duplicate"; two live
publishers on one ``src`` lose nothing silently; and a model of the rules (Hypothesis) agrees
with the script on random orders, repeats and contents.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker import PublisherConfig, SyncPublisher
from broker.codec import decode_entry, pack_body, pack_control
from broker.keys import Keyspace
from broker.script import (
    SEQ_FRAGMENTED,
    SEQ_REUSED,
    WRITE_BATCH_SHA,
    Retention,
    WriteResult,
    parse_reply,
    write_args,
)
from gateway.cli.redis_server import RedisServer
from tests.support.helpers import script_constant, script_server
from tests.support.servers import ServerKind

pytestmark = pytest.mark.server_matrix  # once per server (tests/conftest.py): the script's string ops

WINDOW = script_constant("WINDOW")  # fingerprints kept per src
MAX_RANGES = script_constant("MAX_RANGES")
NO_RETENTION = Retention(0, 0, 0)
_jobs = itertools.count()


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, server_kind: ServerKind) -> Iterator[redis.Redis]:
    with script_server(tmp_path_factory.mktemp("seqs"), server_kind.binary) as c:
        yield c


def line(seq: int, msg: str, src: str = "w", ts_ms: int = 1_764_000_000_000) -> bytes:
    body = pack_body(ts_ms, 20, 0, msg, None, None, None, None, None, None, src, seq, None)
    return pack_control("", "", src, seq, 0, "", body)


def write(client: redis.Redis, job: str, items: list[bytes]) -> WriteResult:
    args = write_args(job, Keyspace().job_keys(job), items, NO_RETENTION, None, None)
    return parse_reply(client.evalsha(WRITE_BATCH_SHA, *args))  # type: ignore[misc]


def stored(client: redis.Redis, job: str) -> list[tuple[str | None, int | None]]:
    """(src, seq) of the job's entries in stream order."""
    entries = (decode_entry(job, i.decode(), f) for i, f in client.xrange(Keyspace().stream(job)))  # type: ignore[union-attr]
    return [(e["src"], e["seq"]) for e in entries]


def stored_seqs(client: redis.Redis, job: str) -> list[int]:
    return [seq or 0 for _, seq in stored(client, job)]


def new_job() -> str:
    return f"seqs-{next(_jobs)}"


def test_lower_seqs_never_stored_are_stored_not_called_duplicates(client: redis.Redis) -> None:
    job = new_job()
    high = write(client, job, [line(s, f"item {s}") for s in range(1001, 2001)])
    low = write(client, job, [line(s, f"item {s}") for s in range(1, 1001)])
    assert (len(high.ids), high.duplicates) == (1000, 0)
    assert (len(low.ids), low.duplicates, low.conflicts) == (1000, 0, ())
    assert sorted(stored_seqs(client, job)) == list(range(1, 2001))
    again = write(client, job, [line(s, f"item {s}") for s in range(1, 2001, 7)])  # a retry of both
    assert (again.ids, again.duplicates, again.conflicts) == ([], len(range(1, 2001, 7)), ())
    # the totals' last_seq is still the highest seq, and the holes between are filled
    assert client.hget(Keyspace().meta(job), "p\x1fw\x1fseq") == b"2000"


def test_a_stored_seq_with_other_content_is_a_conflict(client: redis.Redis) -> None:
    job = new_job()
    write(client, job, [line(s, f"a-{s}") for s in range(1, 11)])
    r = write(client, job, [line(5, "a-5", ts_ms=1_764_000_009_999), line(6, "b-6"), line(11, "a-11")])
    # seq 5 again with another time only: the same entry (a retry whose ts the gateway filled in)
    assert (r.duplicates, r.conflicts, len(r.ids)) == (1, ((1, SEQ_REUSED),), 1)
    assert stored_seqs(client, job) == list(range(1, 12))


def test_content_is_checked_for_the_newest_window_of_seqs(client: redis.Redis) -> None:
    """Older stored seqs keep only their range: sent again with other content they count as
    duplicates (documented), while newer ones are conflicts."""
    job = new_job()
    top = 3 * WINDOW + 100
    for at in range(1, top + 1, 100):  # batch after batch: the kept fingerprints are trimmed on the way
        write(client, job, [line(s, f"a-{s}") for s in range(at, min(at + 100, top + 1))])
    old, recent = top - WINDOW, top - WINDOW + 1
    assert client.strlen(Keyspace().job_keys(job)[3] + ":w") <= 2 * WINDOW * 4
    r = write(client, job, [line(old, "other"), line(recent, "other")])
    assert (r.duplicates, r.conflicts) == (1, ((1, SEQ_REUSED),))


def test_holes_in_the_window_get_fingerprints_when_filled(client: redis.Redis) -> None:
    job = new_job()
    write(client, job, [line(s, f"a-{s}") for s in range(2, 40, 2)])  # even seqs
    write(client, job, [line(s, f"a-{s}") for s in range(1, 40, 2)])  # then the odd ones
    r = write(client, job, [line(s, "other") for s in range(1, 40)])
    assert r.duplicates == 0 and len(r.conflicts) == 39
    assert sorted(stored_seqs(client, job)) == list(range(1, 40))


def test_a_jump_past_the_window_keeps_every_rule(client: redis.Redis) -> None:
    job = new_job()
    write(client, job, [line(1, "a-1"), line(5000, "a-5000")])
    r = write(client, job, [line(1, "a-1"), line(5000, "x"), line(4999, "a-4999"), line(2, "a-2")])
    assert (r.duplicates, r.conflicts, len(r.ids)) == (1, ((1, SEQ_REUSED),), 2)


def test_a_src_with_too_many_holes_is_refused_not_dropped(client: redis.Redis) -> None:
    job = new_job()
    odd = [line(s, "x") for s in range(1, 2 * MAX_RANGES, 2)]  # MAX_RANGES ranges of one seq each
    assert len(write(client, job, odd).ids) == MAX_RANGES
    r = write(client, job, [line(2 * MAX_RANGES + 1, "x"), line(2, "x"), line(2 * MAX_RANGES + 3, "x")])
    # a new range past the limit is refused; 2 joins two ranges, which makes room for one more
    assert r.conflicts == ((0, SEQ_FRAGMENTED),) and len(r.ids) == 2


def test_entries_written_before_seqs_were_tracked_count_as_stored(client: redis.Redis) -> None:
    """A job written by an older version has a last seq but no seqs hash: 1..last are taken as
    stored (what the old rule said), and new seqs go on after it."""
    job = new_job()
    client.hset(Keyspace().meta(job), "p\x1fw\x1fseq", 50)
    r = write(client, job, [line(50, "x"), line(51, "x")])
    assert (r.duplicates, len(r.ids), r.conflicts) == (1, 1, ())


@st.composite
def sends(draw: st.DrawFn) -> list[list[tuple[str, int, str]]]:
    """Batches of (src, seq, content): seqs in any order, repeated, with new or old content."""
    return draw(
        st.lists(
            st.lists(
                st.tuples(
                    st.sampled_from(["a", "b"]),
                    st.one_of(st.integers(1, 40), st.integers(1, 3 * WINDOW)),
                    st.sampled_from(["x", "y"]),
                ),
                min_size=1,
                max_size=30,
            ),
            min_size=1,
            max_size=6,
        )
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=sends())
def test_the_script_agrees_with_the_model(
    client: redis.Redis, batches: list[list[tuple[str, int, str]]]
) -> None:
    """The rule: a stored seq is a duplicate when its content is the same or it is older than
    the newest WINDOW seqs of its src, else a conflict; an unstored seq is stored."""
    job = new_job()
    kept: dict[str, dict[int, str]] = {"a": {}, "b": {}}
    want_stored: list[tuple[str, int]] = []
    for batch in batches:
        dups, conflicts, ids = 0, [], 0
        for at, (src, seq, content) in enumerate(batch):
            have = kept[src]
            if seq not in have:
                have[seq] = content
                want_stored.append((src, seq))
                ids += 1
            elif have[seq] != content and seq > max(have) - WINDOW:
                conflicts.append((at, SEQ_REUSED))
            else:
                dups += 1
        r = write(client, job, [line(seq, content, src) for src, seq, content in batch])
        assert (r.duplicates, list(r.conflicts), len(r.ids)) == (dups, conflicts, ids)
    assert stored(client, job) == want_stored


def test_two_live_publishers_on_one_src_lose_nothing_silently(redis_server: RedisServer) -> None:
    """A rolling restart that overlaps: the new process resumes at the last stored seq while the
    old one still writes. Every entry is stored or counted as rejected, and the loser says so."""
    job = new_job()
    cfg = PublisherConfig(src="fixed-src", max_batch_entries=10)
    reports = []
    start = threading.Barrier(2)

    def run(name: str) -> None:
        with SyncPublisher(redis_server.url, config=cfg) as pub:
            start.wait()
            for i in range(200):
                pub.publish(job, f"{name} item {i}")
                if i % 10 == 0:
                    pub.flush()
            reports.append((pub.close(), pub.health.last_error))

    threads = [threading.Thread(target=run, args=(n,)) for n in ("old", "new")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    c = redis.Redis.from_url(redis_server.url)
    stored = c.xlen(Keyspace().stream(job))
    c.close()
    (a, a_error), (b, b_error) = reports
    assert a.delivered + b.delivered == stored
    assert a.delivered + a.rejected + b.delivered + b.rejected == 400 and a.duplicates + b.duplicates == 0
    assert stored < 400  # the two really collided, and it shows:
    assert not (a.ok and b.ok)
    assert any("another publisher running with the same src" in (e or "") for e in (a_error, b_error))
