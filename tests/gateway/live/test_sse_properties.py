"""Property tests (hypothesis) for SSE framing: whatever text an entry holds, the bytes the gateway
builds for it are exactly one event whose data is the entry, and any run of frames, id-only
events, heartbeats, retries and gaps parses into exactly the expected events and last event id,
however the bytes are cut into chunks.

Why properties: the gateway never escapes anything by hand; it relies on ``json.dumps`` keeping
CR and LF out of the one ``data:`` line (``gateway/sse.py``). That is a claim about every string,
so it is tested with generated ones full of the fragments that would break a naive framing (CR,
LF, CRLF, NUL, ``data:``, ``id:``, ``event:``, Unicode line separators that ``str.splitlines``
would split on). Three readers must agree: ``broker.client``'s resume core (what ``follow``,
``logbroker tail`` and the demo run), httpx-sse fed incrementally, and
``tests.support.sse_client.parse`` on the whole stream.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from httpx_sse import ServerSentEvent
from httpx_sse._decoders import SSEDecoder, SSELineDecoder
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.client import Gap, LogEntry
from broker.client.state import follow_state
from broker.constants import KIND_END, KINDS, LEVELS
from broker.entry import Entry
from gateway.ids import StreamId, format_id
from gateway.live import sse
from gateway.live.filter import Filter
from gateway.live.frames import frames, gap_frame
from gateway.live.items import FRAME, SID, Item, item_of
from tests.support.sse_client import parse

PROPERTY = settings(max_examples=150, deadline=None)
FRAGMENTS = [
    "\r", "\n", "\r\n", "\n\n", "\r\r", "\x00", "data:", "data: x", "id:", "id: 1-0", "event:",
    "event: end", "retry: 1", ":", ": heartbeat", " ", "\u2028", "\u2029", "\x85", "\x0b", "\x0c",
    "\x1c", "\ufeff", "é", "🎉", "\\", '"',
]  # fmt: skip
MAX_ID = 2**64 - 1

texts = st.lists(st.one_of(st.text(max_size=6), st.sampled_from(FRAGMENTS)), max_size=8).map("".join)
names = st.none() | texts.filter(bool)
# finite floats only: entries are validated on the way in (broker.entry rejects NaN and infinity)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), MAX_ID)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
stream_ids = st.tuples(st.integers(0, MAX_ID), st.integers(0, MAX_ID))


@st.composite
def entries(draw: st.DrawFn, sid: StreamId | None = None) -> Entry:
    """Any entry, its free text drawn from ``texts`` (names too: the framing must not depend on
    the ingest rules that keep control characters out of them)."""
    kind = draw(st.sampled_from(list(KINDS)))
    entry_id = format_id(sid if sid is not None else draw(stream_ids))
    return {
        "id": entry_id,
        "job": draw(st.from_regex(r"[A-Za-z0-9._:-]{1,12}", fullmatch=True)),
        "job_name": draw(names),
        "job_type": draw(names),
        "step": draw(names),
        "worker": draw(names),
        "parent": draw(names),
        "line": draw(st.integers(1, 2**40)),
        "level": draw(st.sampled_from(list(LEVELS))),
        "kind": kind,
        "status": draw(names) if kind == "log" else draw(texts.filter(bool)),
        "msg": draw(texts),
        "ts": "2026-11-28T15:00:00.123Z",
        "src": draw(names),
        "seq": draw(st.none() | st.integers(1, 2**53 - 1)),
        "fields": draw(st.none() | st.dictionaries(texts, json_values, max_size=4)),
    }


@dataclass(frozen=True)
class Event:
    """A dispatched event as every parser reports it, data decoded from JSON."""

    event: str
    id: str
    data: Any


def cut(blob: bytes, points: Iterable[int]) -> list[bytes]:
    """``blob`` split at ``points`` (which may cut CRLF pairs and UTF-8 sequences in half)."""
    bounds = [0, *sorted({p for p in points if 0 < p < len(blob)}), len(blob)]
    return [blob[a:b] for a, b in pairwise(bounds)]


def decoded(chunks: list[bytes]) -> list[ServerSentEvent]:
    """httpx-sse's WHATWG line decoder, fed text as an HTTP client decodes it chunk by chunk (at
    the end of the stream an unfinished event is discarded, as the spec says)."""
    text, lines, decoder = codecs.getincrementaldecoder("utf-8")(), SSELineDecoder(), SSEDecoder()
    parts = [text.decode(chunk) for chunk in chunks] + [text.decode(b"", final=True)]
    messages = (decoder.decode(line) for part in parts if part for line in lines.decode(part))
    return [m for m in messages if m is not None]


def with_httpx_sse(chunks: list[bytes]) -> tuple[list[Event], str]:
    events: list[Event] = []
    last_id = ""
    for message in decoded(chunks):
        last_id = message.id
        if message.data:
            events.append(Event(message.event or "message", message.id, json.loads(message.data)))
    return events, last_id


def with_client(chunks: list[bytes]) -> tuple[list[Event], str]:
    """``broker.client``'s core, fed what its transports feed it: typed entries and markers, the
    end recognised, the cursor where a reconnect would resume."""
    state = follow_state("http://gw", "j", after=None, tail=None, step=None, worker=None, level=None,
                         kind=None, token=None, gaps="yield", retry=None, on_retry=None)  # fmt: skip
    state.request()
    assert state.answer(200, {"content-type": "text/event-stream"}, None)
    events: list[Event] = []
    for m in decoded(chunks):
        item = state.event(m.event, m.data, m.id, m.retry)
        if isinstance(item, LogEntry):
            events.append(Event("end" if state.end is item else "message", state.cursor, item.to_dict()))
        elif isinstance(item, Gap):
            gap = {"after": item.after, "first_available": item.first_available, "reason": item.reason}
            events.append(Event("gap", state.cursor, gap))
    return events, state.cursor


def with_test_client(blob: bytes) -> tuple[list[Event], str]:
    parsed = parse(blob)
    return [Event(e.event, e.id, e.json()) for e in parsed.events], parsed.last_id


def assert_parses_to(blob: bytes, points: list[int], expected: list[Event], last_id: str) -> None:
    chunks = cut(blob, points)
    assert with_client(chunks) == (expected, last_id)
    assert with_httpx_sse(chunks) == (expected, last_id)
    assert with_test_client(blob) == (expected, last_id)


@PROPERTY
@given(entry=entries(), points=st.lists(st.integers(0, 4096), max_size=6))
def test_one_entry_is_exactly_one_event_carrying_the_entry(entry: Entry, points: list[int]) -> None:
    frame = item_of(entry, (0, 0))[FRAME]  # the frame is built from the entry; the sid is for cursors
    ended = entry["kind"] == "end"
    assert b"\r" not in frame and frame.count(b"\n") == (4 if ended else 3) and frame.endswith(b"\n\n")
    expected = Event("end" if ended else "message", entry["id"], entry)
    assert_parses_to(frame, points, [expected], entry["id"])


@st.composite
def runs(draw: st.DrawFn) -> tuple[bytes, list[Event], str]:
    """Frames as a gateway writes them, and what a client must make of them."""
    blob, expected, last_id = sse.retry(draw(st.integers(0, 3_600_000))), [], ""
    for _ in range(draw(st.integers(0, 12))):
        part = draw(st.sampled_from(["entry", "entry", "id_only", "heartbeat", "comment", "retry", "gap"]))
        if part == "entry":
            entry = draw(entries())
            blob += item_of(entry, (0, 0))[FRAME]
            expected.append(Event("end" if entry["kind"] == "end" else "message", entry["id"], entry))
            last_id = entry["id"]
        elif part == "id_only":
            last_id = format_id(draw(stream_ids))
            blob += sse.id_only(last_id)
        elif part in ("heartbeat", "comment"):
            blob += sse.comment("heartbeat" if part == "heartbeat" else draw(texts))
        elif part == "retry":
            blob += sse.retry(draw(st.integers(0, 3_600_000)))
        else:
            after, first = draw(stream_ids), draw(st.tuples(st.integers(1, MAX_ID), st.integers(0, MAX_ID)))
            frame, cursor = gap_frame(after, first)
            blob += frame
            last_id = format_id(cursor)
            gap = {"after": format_id(after), "first_available": format_id(first), "reason": "trimmed"}
            expected.append(Event("gap", last_id, gap))
    return blob, expected, last_id


@PROPERTY
@given(run=runs(), data=st.data())
def test_a_run_of_frames_parses_into_exactly_its_events_whatever_the_chunking(
    run: tuple[bytes, list[Event], str], data: st.DataObject
) -> None:
    blob, expected, last_id = run
    points = data.draw(st.lists(st.integers(0, len(blob)), max_size=20) | st.just(list(range(len(blob)))))
    assert_parses_to(blob, points, expected, last_id)


@st.composite
def filtered_runs(draw: st.DrawFn) -> tuple[list[Item], list[Entry], Filter]:
    """Items with increasing stream ids (as a job's stream has), and a filter over them."""
    sids = sorted(draw(st.sets(stream_ids, min_size=1, max_size=15)))
    run = [draw(entries(sid)) for sid in sids]
    steps, workers = [e["step"] for e in run], [e["worker"] for e in run]
    some = Filter(
        draw(st.none() | st.sampled_from(steps)),
        draw(st.none() | st.sampled_from(workers)),
        draw(st.sampled_from([0, *LEVELS.values()])),
        draw(st.none() | st.frozensets(st.sampled_from(list(KINDS.values())), min_size=1)),
    )
    flt = draw(st.sampled_from([some, Filter()]))  # no filter: the lean path most clients take
    return [item_of(e, sid) for e, sid in zip(run, sids, strict=True)], run, flt


def wanted(run: list[Entry], flt: Filter) -> list[Entry]:
    """What a filtered client must see: matching entries, and the end entry, where the run stops."""
    out: list[Entry] = []
    for e in run:
        if KINDS[e["kind"]] == KIND_END:
            return [*out, e]
        if (
            flt.step in (None, e["step"])
            and flt.worker in (None, e["worker"])
            and LEVELS[e["level"]] >= flt.min_level
            and (flt.kinds is None or KINDS[e["kind"]] in flt.kinds)
        ):
            out.append(e)
    return out


@PROPERTY
@given(
    case=filtered_runs(), max_bytes=st.integers(1, 4096), points=st.lists(st.integers(0, 1 << 16), max_size=8)
)
def test_filtered_writes_carry_exactly_the_wanted_events_and_move_the_cursor_past_the_rest(
    case: tuple[list[Item], list[Entry], Filter], max_bytes: int, points: list[int]
) -> None:
    """``feed.frames`` as the subscriber calls it, one bounded write after another: the client sees
    every wanted entry once, in order, and its Last-Event-ID ends on the last entry looked at."""
    items, run, flt = case
    blob, position, cursor = b"", 0, None
    while position < len(items):
        written = frames(items[position:], flt, max_bytes)
        assert written.cursor is not None and written.events == len(parse(written.blob).events)
        blob, cursor = blob + written.blob, written.cursor
        position = [item[SID] for item in items].index(cursor) + 1
        if written.ended:
            break
    expected = [Event("end" if e["kind"] == "end" else "message", e["id"], e) for e in wanted(run, flt)]
    assert cursor is not None
    assert_parses_to(blob, points, expected, format_id(cursor))
    assert position == len(items) or expected[-1].event == "end"
