"""The publisher's IO-free buffer (broker/outbox.py): seq, batches, overflow, delivery marks."""

from __future__ import annotations

import time
from typing import Any, NamedTuple, cast

import msgpack
import pytest

from broker.codec import content_fingerprint, unpack_body
from broker.config import PublisherConfig
from broker.constants import KIND_END, KIND_LOG, KIND_STATUS, LEVELS
from broker.errors import InvalidEntry
from broker.handles import JobHandle, WorkerHandle
from broker.outbox import Backlog, Batch, Offer, Outbox
from broker.script import WriteResult

SRC = "host-a:4711"


class Item(NamedTuple):
    step: str
    worker: str
    src: str
    seq: int
    kind: int
    status: str
    body: list[Any]

    @property
    def msg(self) -> str:
        return str(self.body[4])

    @property
    def fields(self) -> dict[str, Any] | None:
        return self.body[13]  # type: ignore[no-any-return]


def item(raw: bytes) -> Item:
    """A packed control tuple: strings are msgpack raw (for Lua's cmsgpack), the body is bytes."""
    step, worker, src, seq, kind, status, body, print_ = msgpack.unpackb(raw, raw=True)
    assert print_ == content_fingerprint(body)
    return Item(step.decode(), worker.decode(), src.decode(), seq, kind, status.decode(), unpack_body(body))


def items(batch: Batch) -> list[Item]:
    return [item(raw) for raw in batch.items]


def seqs(batch: Batch) -> list[int]:
    return [i.seq for i in items(batch)]


def outbox(**options: Any) -> Outbox:
    return Outbox(PublisherConfig(**options), SRC)


def stored(batch: Batch, duplicates: int = 0) -> WriteResult:
    return WriteResult(
        ids=[f"{i + 1}-0" for i in range(len(batch.items) - duplicates)], duplicates=duplicates
    )


def take_one(box: Outbox, job: str) -> Batch:
    batches, _ = box.take()
    mine = [b for b in batches if b.job == job]
    assert len(mine) == 1, [b.job for b in batches]
    return mine[0]


def drain(box: Outbox) -> list[Item]:
    """Deliver everything queued; the items in the order they were written."""
    out: list[Item] = []
    while True:
        batches, _ = box.take()
        if not batches:
            return out
        for batch in batches:
            out.extend(items(batch))
            box.settle(batch, stored(batch))


def markers(delivered: list[Item]) -> list[Item]:
    return [i for i in delivered if i.fields is not None and "dropped" in i.fields]


# ---- seq and batches ------------------------------------------------------------------------


def test_seq_counts_per_job_from_one_in_call_order() -> None:
    box = outbox()
    for job, msg in [("a", "a1"), ("b", "b1"), ("a", "a2"), ("a", "a3"), ("b", "b2")]:
        assert box.offer(job, msg) is Offer.QUEUED
    batches, wait = box.take()
    assert wait is None
    by_job = {b.job: items(b) for b in batches}
    assert [(i.seq, i.msg) for i in by_job["a"]] == [(1, "a1"), (2, "a2"), (3, "a3")]
    assert [(i.seq, i.msg) for i in by_job["b"]] == [(1, "b1"), (2, "b2")]
    for i in by_job["a"] + by_job["b"]:
        assert i.src == SRC
        assert i.body[11] == SRC  # the body carries the same identity
        assert i.body[12] == i.seq
        assert i.kind == KIND_LOG


def test_control_tuple_carries_step_worker_and_body() -> None:
    box = outbox()
    box.offer("mgr-42", "hello", step="s1", worker="w-1", parent="p", fields={"n": 1}, level=LEVELS["error"],
              job_name="Gen", job_type="manager", ts_ms=1795878000123)  # fmt: skip
    batch = take_one(box, "mgr-42")
    assert batch.keys == PublisherConfig().keyspace.job_keys("mgr-42")
    assert (batch.job_name, batch.job_type) == ("Gen", "manager")
    [i] = items(batch)
    assert (i.step, i.worker, i.src, i.seq, i.kind, i.status) == ("s1", "w-1", SRC, 1, KIND_LOG, "")
    assert i.body == [1, 1795878000123, 40, KIND_LOG, "hello", "s1", "w-1", "p", None, "Gen", "manager",
                      SRC, 1, {"n": 1}]  # fmt: skip


def test_one_batch_per_job_until_settled() -> None:
    box = outbox()
    for n in range(3):
        box.offer("a", f"m{n}")
    first = take_one(box, "a")
    assert seqs(first) == [1, 2, 3]
    box.offer("a", "m3")
    box.offer("a", "m4")
    assert box.take() == ([], None)
    box.settle(first, stored(first))
    second = take_one(box, "a")
    assert seqs(second) == [4, 5]
    assert box.take() == ([], None)


def test_other_jobs_are_not_held_up_by_one_in_flight() -> None:
    box = outbox()
    box.offer("a", "a1")
    take_one(box, "a")
    box.offer("a", "a2")
    box.offer("b", "b1")
    batches, _ = box.take()
    assert [(b.job, seqs(b)) for b in batches] == [("b", [1])]


def test_retry_sends_the_same_entries_again_first() -> None:
    box = outbox()
    box.offer("a", "m1")
    box.offer("a", "m2")
    first = take_one(box, "a")
    box.offer("a", "m3")
    box.retry([first])
    again = take_one(box, "a")
    assert again.items[: len(first.items)] == first.items  # byte for byte: same seq, same ts
    assert seqs(again) == [1, 2, 3]
    box.settle(again, stored(again))
    assert box.take() == ([], None)
    assert box.report().delivered == 3


def test_retry_then_settle_of_a_partial_batch() -> None:
    box = outbox(max_batch_entries=2)
    for n in range(3):
        box.offer("a", f"m{n}")
    first = take_one(box, "a")
    box.retry([first])
    again = take_one(box, "a")
    assert again.items == first.items
    box.settle(again, stored(again))
    assert seqs(take_one(box, "a")) == [3]


def test_max_batch_entries() -> None:
    box = outbox(max_batch_entries=3)
    for n in range(7):
        box.offer("a", f"m{n}")
    got = []
    for _ in range(3):
        batch = take_one(box, "a")
        assert len(batch.items) <= 3
        got.append(seqs(batch))
        box.settle(batch, stored(batch))
    assert got == [[1, 2, 3], [4, 5, 6], [7]]
    assert box.take() == ([], None)


def test_max_batch_bytes() -> None:
    probe = outbox()
    probe.offer("a", "0" + "x" * 299)
    size = len(take_one(probe, "a").items[0])
    assert 300 < size < 400
    box = outbox(max_batch_bytes=1024)
    for n in range(10):
        box.offer("a", f"{n}" + "x" * 299)
    got = []
    while True:
        batches, _ = box.take()
        if not batches:
            break
        [batch] = batches
        assert sum(len(i) for i in batch.items) <= 1024
        got.append(seqs(batch))
        box.settle(batch, stored(batch))
    per_batch = 1024 // size
    assert per_batch >= 2
    full, rest = divmod(10, per_batch)
    assert [len(s) for s in got] == [per_batch] * full + ([rest] if rest else [])
    assert [seq for s in got for seq in s] == list(range(1, 11))


def test_an_entry_bigger_than_max_batch_bytes_still_goes_alone() -> None:
    box = outbox(max_batch_bytes=1024)
    box.offer("a", "x" * 5000)
    box.offer("a", "small")
    batch = take_one(box, "a")
    assert seqs(batch) == [1]
    box.settle(batch, stored(batch))
    assert seqs(take_one(box, "a")) == [2]


def test_backlog_tells_a_producer_when_to_let_the_sender_run() -> None:
    box = outbox(max_batch_entries=3)
    assert box.backlog("a") is Backlog.NONE
    box.offer("a", "1")
    box.offer("a", "2")
    assert box.backlog("a") is Backlog.NONE
    box.offer("a", "3")
    assert box.backlog("a") is Backlog.UNTAKEN, "a full batch the sender has not taken"
    first = take_one(box, "a")
    assert box.backlog("a") is Backlog.NONE
    for n in range(4, 7):
        box.offer("a", str(n))
    assert box.backlog("a") is Backlog.BEHIND_WRITE, "a full batch waits on the write in flight"
    box.settle(first, stored(first))
    assert box.backlog("a") is Backlog.UNTAKEN
    assert box.backlog("other job") is Backlog.NONE


# ---- linger ---------------------------------------------------------------------------------


def test_linger_holds_a_batch_until_due() -> None:
    box = outbox(linger_ms=10_000)
    box.offer("a", "m1")
    now = time.monotonic()
    batches, wait = box.take(now=now)
    assert batches == []
    assert wait is not None
    assert 9.0 < wait <= 10.0
    box.offer("a", "m2")
    assert box.take(now=now + 5)[0] == []
    batches, wait = box.take(now=now + 10.5)
    assert [seqs(b) for b in batches] == [[1, 2]]
    assert wait is None


def test_linger_does_not_hold_a_full_batch() -> None:
    box = outbox(linger_ms=10_000, max_batch_entries=3)
    for n in range(4):
        box.offer("a", f"m{n}")
    batches, _ = box.take(now=time.monotonic())
    assert [seqs(b) for b in batches] == [[1, 2, 3]]


def test_linger_wait_is_the_soonest_job() -> None:
    box = outbox(linger_ms=10_000)
    box.offer("a", "m")
    now = time.monotonic()
    box.offer("b", "m")
    _, wait = box.take(now=now + 4)
    assert wait is not None
    assert 5.0 < wait <= 6.0


def test_linger_does_not_hold_a_batch_full_by_bytes() -> None:
    box = outbox(linger_ms=10_000, max_batch_bytes=1024)
    for n in range(5):
        box.offer("a", f"{n}" + "x" * 399)
    batches, _ = box.take(now=time.monotonic())
    assert len(batches) == 1


# ---- overflow -------------------------------------------------------------------------------


def test_block_refuses_when_full_and_queues_nothing() -> None:
    box = outbox(max_buffer_entries=2)
    assert box.offer("a", "m1") is Offer.QUEUED
    assert box.offer("b", "m1") is Offer.QUEUED
    assert box.offer("a", "m2") is Offer.FULL
    assert box.offer("c", "m1") is Offer.FULL
    report = box.report()
    assert (report.accepted, report.pending, report.dropped) == (2, 2, 0)
    batches, _ = box.take()
    assert sorted((b.job, seqs(b)) for b in batches) == [("a", [1]), ("b", [1])]
    for b in batches:
        box.settle(b, stored(b))
    assert box.offer("a", "m2") is Offer.QUEUED
    [again] = items(take_one(box, "a"))
    assert (again.seq, again.msg) == (2, "m2")  # the refused offer did not use up a seq


def test_block_by_bytes() -> None:
    box = outbox(max_buffer_bytes=1000)
    assert box.offer("a", "x" * 600) is Offer.QUEUED
    assert box.offer("a", "x" * 600) is Offer.FULL
    assert box.offer("a", "x" * 100) is Offer.QUEUED
    assert box.report().pending == 2


def test_an_entry_bigger_than_the_buffer_is_accepted_when_empty() -> None:
    box = outbox(max_buffer_bytes=1000)
    assert box.offer("a", "x" * 5000) is Offer.QUEUED


def test_drop_new_counts_and_writes_an_exact_marker() -> None:
    box = outbox(max_buffer_entries=2, overflow="drop_new")
    assert box.offer("a", "m1", job_name="Gen", job_type="manager") is Offer.QUEUED
    assert box.offer("a", "m2") is Offer.QUEUED
    for _ in range(3):
        assert box.offer("a", "lost") is Offer.DROPPED
    assert box.report().dropped == 3
    first = take_one(box, "a")
    assert seqs(first) == [1, 2]
    assert box.offer("a", "lost") is Offer.DROPPED
    box.settle(first, stored(first))
    marker = take_one(box, "a")
    [m] = items(marker)
    assert m.fields == {"dropped": 4, "policy": "drop_new"}
    assert "dropped 4 entries" in m.msg
    assert SRC in m.msg
    assert m.seq == 3
    assert m.body[2] == LEVELS["warning"]
    assert (m.step, m.worker, m.kind) == ("", "", KIND_LOG)
    assert (m.body[9], m.body[10]) == ("Gen", "manager")
    box.settle(marker, stored(marker))
    assert box.offer("a", "next") is Offer.QUEUED
    [n] = items(take_one(box, "a"))
    assert (n.seq, n.msg) == (4, "next")
    report = box.report()
    assert (report.accepted, report.delivered, report.dropped, report.pending) == (4, 3, 4, 1)
    assert not report.ok


def test_drop_new_marker_comes_before_the_next_entry() -> None:
    box = outbox(max_buffer_entries=1, overflow="drop_new")
    box.offer("a", "m1")
    box.offer("a", "lost")
    box.offer("b", "b-lost")  # another job's drop is counted for that job
    delivered = drain(box)
    assert [(i.seq, i.msg) for i in delivered if i.fields is None] == [(1, "m1")]
    box.offer("b", "b1")
    delivered = drain(box)
    assert [(i.seq, i.fields, i.msg.split(":")[0]) for i in delivered] == [
        (1, {"dropped": 1, "policy": "drop_new"}, "dropped 1 entries"),
        (2, None, "b1"),
    ]
    assert box.report().dropped == 2


def test_marks_writes_the_pending_drop_marker() -> None:
    box = outbox(max_buffer_entries=1, overflow="drop_new")
    box.offer("a", "m1")
    box.offer("a", "lost")
    box.offer("b", "lost")
    marks = box.marks()
    assert marks == {"a": 2, "b": 1}  # a: m1 and its marker; b: its marker only
    delivered = drain(box)
    assert sorted(m.fields["dropped"] for m in markers(delivered)) == [1, 1]  # type: ignore[index]
    assert box.outstanding(marks) == 0


def test_drop_oldest_drops_unsent_never_in_flight() -> None:
    box = outbox(max_buffer_entries=3, max_batch_entries=1, overflow="drop_oldest")
    for n in (1, 2, 3):
        assert box.offer("a", f"m{n}") is Offer.QUEUED
    in_flight = take_one(box, "a")
    assert box.offer("a", "m4") is Offer.QUEUED
    box.settle(in_flight, stored(in_flight))
    delivered = [items(in_flight)[0], *drain(box)]
    assert [i.msg for i in delivered if i.fields is None] == ["m1", "m3", "m4"]
    [marker] = markers(delivered)
    assert marker.fields == {"dropped": 1, "policy": "drop_oldest"}
    assert "dropped 1 entries" in marker.msg
    assert [i.seq for i in delivered] == [1, 3, 4, 5]  # m2 (seq 2) is the gap the marker explains


def test_drop_oldest_with_everything_in_flight_drops_the_new_entry() -> None:
    box = outbox(max_buffer_entries=2, overflow="drop_oldest")
    box.offer("a", "m1")
    box.offer("a", "m2")
    batch = take_one(box, "a")
    assert box.offer("a", "m3") is Offer.DROPPED
    box.settle(batch, stored(batch))
    [marker] = markers(drain(box))
    assert marker.fields == {"dropped": 1, "policy": "drop_oldest"}


def test_drop_oldest_drops_other_jobs_unsent_entries_too() -> None:
    box = outbox(max_buffer_entries=2, overflow="drop_oldest")
    box.offer("a", "a1")
    box.offer("a", "a2")
    assert box.offer("b", "b1") is Offer.QUEUED
    delivered = drain(box)
    a_entries = [i.msg for i in delivered if i.fields is None and i.msg.startswith("a")]
    assert a_entries == ["a2"]
    [marker] = markers(delivered)
    assert marker.fields == {"dropped": 1, "policy": "drop_oldest"}


def test_drop_oldest_marker_counts_are_exact_under_sustained_overflow() -> None:
    box = outbox(max_buffer_entries=3, overflow="drop_oldest")
    for n in range(10):
        assert box.offer("a", f"m{n}") is Offer.QUEUED
    delivered = drain(box)
    kept = [i.msg for i in delivered if i.fields is None]
    assert kept == ["m7", "m8", "m9"]  # the newest survive
    assert sum(m.fields["dropped"] for m in markers(delivered)) == 7  # type: ignore[index]
    assert box.report().dropped == 7


@pytest.mark.parametrize("max_batch_entries", [1, 2, 5])
def test_drop_oldest_markers_are_never_dropped_and_add_up(max_batch_entries: int) -> None:
    box = outbox(max_buffer_entries=4, max_batch_entries=max_batch_entries, overflow="drop_oldest")
    delivered: list[Item] = []
    offered = 0
    for round_ in range(20):
        for _ in range(3 + round_ % 4):
            assert box.offer("a", f"m{offered}") in (Offer.QUEUED, Offer.DROPPED)
            offered += 1
        batches, _ = box.take()
        for batch in batches:
            delivered.extend(items(batch))
            box.settle(batch, stored(batch))
    box.marks()
    delivered += drain(box)
    kept = [i.msg for i in delivered if i.fields is None]
    assert kept == sorted(kept, key=lambda m: int(m[1:]))  # order kept
    lost = offered - len(kept)
    assert lost > 0
    assert sum(m.fields["dropped"] for m in markers(delivered)) == lost  # type: ignore[index]
    assert box.report().dropped == lost
    assert [i.seq for i in delivered] == sorted(i.seq for i in delivered)
    assert box.report().pending == 0


def test_take_never_returns_an_empty_batch() -> None:
    box = outbox(max_buffer_entries=2, overflow="drop_oldest")
    box.offer("a", "a1")
    box.offer("b", "b1")
    box.offer("c", "c1")  # drops a1, a's only entry
    batches, _ = box.take()
    assert all(b.items for b in batches), [(b.job, len(b.items)) for b in batches]


# ---- delivery marks and the report -------------------------------------------------------------


def test_marks_and_outstanding() -> None:
    box = outbox(max_batch_entries=2)
    for n in range(3):
        box.offer("a", f"a{n}")
    box.offer("b", "b0")
    box.offer("b", "b1")
    marks = box.marks()
    assert marks == {"a": 3, "b": 2}
    assert box.outstanding(marks) == 5
    batches, _ = box.take()
    box.offer("a", "after the mark")
    by_job = {b.job: b for b in batches}
    box.settle(by_job["a"], stored(by_job["a"]))
    assert box.outstanding(marks) == 3
    box.settle(by_job["b"], stored(by_job["b"]))
    assert box.outstanding(marks) == 1
    rest = take_one(box, "a")
    assert seqs(rest) == [3, 4]
    box.settle(rest, stored(rest))
    assert box.outstanding(marks) == 0
    assert box.marks() == {}


def test_outstanding_counts_rejected_as_settled() -> None:
    box = outbox()
    box.offer("a", "m")
    marks = box.marks()
    batch = take_one(box, "a")
    assert box.outstanding(marks) == 1
    box.settle(batch, None)
    assert box.outstanding(marks) == 0


def test_outstanding_of_a_later_mark_waits_for_later_entries() -> None:
    box = outbox()
    box.offer("a", "1")
    first = take_one(box, "a")
    early = box.marks()
    box.offer("a", "2")
    late = box.marks()
    assert (early, late) == ({"a": 1}, {"a": 2})
    box.settle(first, stored(first))
    assert (box.outstanding(early), box.outstanding(late)) == (0, 1)


def test_outstanding_is_not_zero_while_an_entry_before_the_mark_is_in_flight() -> None:
    box = outbox(max_buffer_entries=3, max_batch_entries=1, overflow="drop_oldest")
    for n in range(3):
        box.offer("a", f"m{n}")
    in_flight = take_one(box, "a")
    marks = box.marks()
    for n in range(3, 6):
        box.offer("a", f"m{n}")
    assert box.outstanding(marks) >= 1  # m0 is neither stored nor rejected yet
    box.settle(in_flight, stored(in_flight))


def test_settle_none_counts_rejected() -> None:
    box = outbox()
    for n in range(4):
        box.offer("a", f"m{n}")
    batch = take_one(box, "a")
    box.settle(batch, None)
    report = box.report()
    assert (report.accepted, report.delivered, report.rejected, report.pending) == (4, 0, 4, 0)
    assert not report.ok
    assert box.take() == ([], None)


def test_report_adds_up() -> None:
    box = outbox(max_batch_entries=5)
    for n in range(12):
        box.offer(f"job-{n % 2}", f"m{n}")
    report = box.report()
    assert (report.accepted, report.pending, report.delivered, report.ok) == (12, 12, 0, False)
    batches, _ = box.take()
    assert [len(b.items) for b in batches] == [5, 5]
    box.settle(batches[0], stored(batches[0], duplicates=2))
    box.settle(batches[1], None)
    report = box.report()
    assert (report.delivered, report.duplicates, report.rejected, report.pending) == (3, 2, 5, 2)
    assert report.accepted == report.delivered + report.duplicates + report.rejected + report.pending
    for batch in box.take()[0]:
        box.settle(batch, stored(batch))
    report = box.report()
    assert (report.delivered, report.duplicates, report.rejected, report.pending) == (5, 2, 5, 0)
    assert report.dropped == 0
    assert report.accepted == report.delivered + report.duplicates + report.rejected + report.pending
    assert not report.ok  # rejected entries


def test_report_ok_when_everything_is_delivered() -> None:
    box = outbox()
    box.offer("a", "m")
    drain(box)
    report = box.report()
    assert (report.accepted, report.delivered, report.pending) == (1, 1, 0)
    assert report.ok


# ---- status, end and validation ---------------------------------------------------------------

DESIGN_STATUS = (
    'Status changed: running (job: mgr-42 "Test Job Generator", type: manager, '
    "step: high_volume_generator, worker: w-17)"
)


def test_status_entry_names_what_changed() -> None:
    box = outbox()
    who = {"step": "high_volume_generator", "worker": "w-17", "job_name": "Test Job Generator"}
    box.offer("mgr-42", "", kind=KIND_STATUS, status="running", job_type="manager", **who)
    box.offer("mgr-42", "resumed after retry", kind=KIND_STATUS, status="running", job_type="manager", **who)
    plain, with_text = items(take_one(box, "mgr-42"))
    assert plain.msg == DESIGN_STATUS
    assert with_text.msg == DESIGN_STATUS + ": resumed after retry"
    assert (plain.kind, plain.status, plain.step, plain.worker) == (
        KIND_STATUS, "running", "high_volume_generator", "w-17"
    )  # fmt: skip
    assert plain.body[8] == "running"


def test_end_entry_names_the_job() -> None:
    box = outbox()
    box.offer(
        "mgr-42", "", kind=KIND_END, status="completed", job_name="Test Job Generator", job_type="manager"
    )
    [end] = items(take_one(box, "mgr-42"))
    assert end.msg == 'Job finished: completed (job: mgr-42 "Test Job Generator", type: manager)'
    assert (end.kind, end.status) == (KIND_END, "completed")


@pytest.mark.parametrize("kind", [KIND_STATUS, KIND_END])
def test_status_and_end_need_a_status(kind: int) -> None:
    box = outbox()
    with pytest.raises(InvalidEntry) as info:
        box.offer("a", "", kind=kind)
    assert info.value.field == "status"
    assert box.report().accepted == 0


@pytest.mark.parametrize(
    ("job", "kwargs", "field"),
    [
        ("bad job", {}, "job"),
        ("", {}, "job"),
        ("a", {"worker": "w"}, "step"),
        ("a", {"step": "bad\nstep"}, "step"),
        ("a", {"job_name": ""}, "job_name"),
        ("a", {"job_type": "t" * 257}, "job_type"),
        ("a", {"fields": {"x": float("nan")}}, "fields.x"),
        ("a", {"fields": [1]}, "fields"),
        ("a", {"status": "not ok"}, "status"),
        ("a", {"msg": 12}, "msg"),
    ],
)
def test_invalid_entries_are_refused_before_anything_is_queued(
    job: str, kwargs: dict[str, Any], field: str
) -> None:
    box = outbox()
    msg = kwargs.pop("msg", "m")
    with pytest.raises(InvalidEntry) as info:
        box.offer(job, msg, **kwargs)
    assert info.value.field == field
    assert box.report().accepted == 0
    assert box.take() == ([], None)
    assert box.marks() == {}
    box.offer("a", "fine")
    assert seqs(take_one(box, "a")) == [1]  # no seq was used up by the refused entry


def test_oversized_message_is_clipped_to_max_message_bytes() -> None:
    box = outbox(max_message_bytes=256)
    box.offer("a", "😀" * 1000)
    [i] = items(take_one(box, "a"))
    assert len(i.msg.encode()) <= 256
    assert "truncated: 4000 bytes, limit 256" in i.msg


def test_bytes_message_with_invalid_utf8_is_replaced() -> None:
    box = outbox()
    box.offer("a", b"bin \xff\xfe")
    [i] = items(take_one(box, "a"))
    assert i.msg == "bin \ufffd\ufffd"


def test_fields_tuples_become_lists() -> None:
    box = outbox()
    box.offer("a", "m", fields={"pair": (1, 2)})
    [i] = items(take_one(box, "a"))
    assert i.fields == {"pair": [1, 2]}


# ---- a handle's lines (offer_line, the hot path) --------------------------------------------


def handle_worker(job: str = "a") -> WorkerHandle[Any]:
    """A worker handle whose sink is never called: ``offer_line`` takes only its identity."""
    return JobHandle(cast(Any, None), job, "Gen", "manager").step("s").worker("w", parent="p")


def test_a_handle_line_is_the_entry_offer_makes() -> None:
    box = outbox()
    worker = handle_worker()
    assert box.offer_line(worker, LEVELS["error"], "boom", {"n": [1, 2.5]}) is Offer.QUEUED
    assert box.offer("a", "boom", level=LEVELS["error"], step="s", worker="w", parent="p",
                     fields={"n": [1, 2.5]}, job_name="Gen", job_type="manager") is Offer.QUEUED  # fmt: skip
    line, same = items(take_one(box, "a"))
    assert (line.seq, line.body[12], same.seq) == (1, 1, 2)

    def but_ts_and_seq(i: Item) -> tuple[Any, ...]:
        return (
            i.step,
            i.worker,
            i.src,
            i.kind,
            i.status,
            [v for n, v in enumerate(i.body) if n not in (1, 12)],
        )

    assert but_ts_and_seq(line) == but_ts_and_seq(same)
    assert but_ts_and_seq(line)[:3] == ("s", "w", SRC)


def test_a_handle_line_after_drops_is_renumbered_behind_the_marker() -> None:
    box = outbox(max_buffer_entries=1, overflow="drop_new")
    worker = handle_worker("b")
    box.offer("a", "m1")
    assert box.offer_line(worker, LEVELS["info"], "lost", None) is Offer.DROPPED
    drain(box)  # room again, and job b has not written since its drop
    assert box.offer_line(worker, LEVELS["info"], "b1", None) is Offer.QUEUED
    delivered = drain(box)
    assert [(i.seq, i.msg.split(":")[0]) for i in delivered] == [(1, "dropped 1 entries"), (2, "b1")]
    assert (delivered[1].step, delivered[1].worker, delivered[1].body[7]) == ("s", "w", "p")


def test_a_handle_line_is_packed_for_the_outbox_src_even_after_a_fork() -> None:
    worker = handle_worker()
    for src in ("parent:1:aa", "child:2:bb", "parent:1:aa"):
        box = Outbox(PublisherConfig(), src)
        box.offer_line(worker, LEVELS["info"], "hello", None)
        [line] = items(take_one(box, "a"))
        assert (line.src, line.body[11]) == (src, src)


@pytest.mark.parametrize(
    ("msg", "fields", "field"),
    [(42, None, "msg"), ("m", {"bad": object()}, "fields.bad"), ("m", {"x": "y" * 70_000}, "fields")],
)
def test_a_bad_handle_line_is_refused_and_nothing_is_queued(msg: object, fields: Any, field: str) -> None:
    box = outbox()
    with pytest.raises(InvalidEntry) as info:
        box.offer_line(handle_worker(), LEVELS["info"], msg, fields)
    assert info.value.field == field
    assert box.report().accepted == 0 and box.take()[0] == []
