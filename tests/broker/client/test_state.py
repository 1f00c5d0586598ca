"""The client's sans-IO core (``broker.client.state``), fed the bytes a gateway sends: the cursor,
what each event yields, gaps and resets, the meaning of each status, and the retry bounds. The
transports only move bytes, so what holds here holds for ``follow`` and ``follow_sync`` alike."""

from __future__ import annotations

import json
from typing import Any

import pytest
from httpx_sse._decoders import SSEDecoder, SSELineDecoder

from broker.client import (
    BadRequest,
    Forbidden,
    Gap,
    GapError,
    LogEntry,
    NotFound,
    ProtocolError,
    Refused,
    Reset,
    ResetError,
    RetriesExhausted,
    Retry,
    ServerError,
    Unauthorized,
)
from broker.client.errors import StreamEnded as StreamEndedError
from broker.client.retry import Backoff
from broker.client.state import FollowState, Item, ReplayState, follow_state, replay_state
from broker.errors import InvalidConfig

BASE = "http://gw:8080"
SSE = {"content-type": "text/event-stream; charset=utf-8"}
JSON_TYPE = {"content-type": "application/json; charset=utf-8"}


def entry(i: int, kind: str = "log", **over: Any) -> dict[str, Any]:
    e = {
        "id": f"{i}-0", "job": "j", "job_name": None, "job_type": None, "step": "s", "worker": None,
        "parent": None, "line": i, "level": "info", "kind": kind, "status": None, "msg": f"m{i}",
        "ts": "2026-11-28T15:00:00.123Z", "src": "a", "seq": i, "fields": None,
    }  # fmt: skip
    return {**e, **over}


def frame(data: dict[str, Any] | None, event_id: str, event: str = "") -> str:
    head = f"event: {event}\n" if event else ""
    body = f"data: {json.dumps(data)}\n" if data is not None else ""
    return f"{head}id: {event_id}\n{body}\n"


class Wire:
    """One connection's bytes through httpx-sse's decoders, as the transports read them."""

    def __init__(self, state: FollowState) -> None:
        self.state, self.lines, self.decoder = state, SSELineDecoder(), SSEDecoder()

    def feed(self, text: str) -> list[Item]:
        out = []
        for line in self.lines.decode(text):
            sse = self.decoder.decode(line)
            if sse is not None and (item := self.state.event(sse.event, sse.data, sse.id, sse.retry)):
                out.append(item)
        return out


def connect(state: FollowState) -> Wire:
    req = state.request()
    assert req.stream
    assert state.answer(200, SSE, None)
    return Wire(state)


def new(**kw: Any) -> FollowState:
    args: dict[str, Any] = dict(after=None, tail=None, step=None, worker=None, level=None, kind=None,
                                token=None, gaps="raise", retry=None, on_retry=None)  # fmt: skip
    return follow_state(kw.pop("base", BASE), "j", **{**args, **kw})


def test_entries_move_the_cursor_filters_id_only_events_too_and_the_end_stops() -> None:
    s = new(step="s", kind=["log", "end"], token="t0k")
    req = s.request()
    assert req.url == f"{BASE}/v1/jobs/j/stream"
    assert req.params == (("step", "s"), ("kind", "log,end"))
    assert req.headers["Authorization"] == "Bearer t0k" and "Last-Event-ID" not in req.headers
    w = connect(s)
    got = w.feed("retry: 250\n\n" + frame(entry(1), "1-0") + ": heartbeat\n\n" + frame(None, "5-0"))
    assert [e.id for e in got if isinstance(e, LogEntry)] == ["1-0"]
    assert s.cursor == "5-0", "an id-only event (entries the filter left out) moves the cursor"
    assert s.c.backoff.advice_ms == 250
    end = entry(6, "end", status="completed", fields={"totals": {"entries": 5}})
    [last] = w.feed(frame(end, "6-0", "end"))
    assert isinstance(last, LogEntry) and last.totals == {"entries": 5} and s.done and s.end == last
    s.closed()  # the server closing after the end is no failure


def test_a_drop_resumes_from_the_cursor_on_the_next_gateway_with_last_event_id() -> None:
    s = new(base=[BASE, "http://gw2:8080/"], tail=10, level="warning")
    assert ("tail", "10") in s.request().params
    w = connect(s)
    w.feed(frame(entry(3), "3-0"))
    with pytest.raises(Exception) as dropped:
        s.closed()
    delay = s.failed(dropped.value)
    assert 0 < delay <= 0.1
    req = s.request()
    assert req.url == "http://gw2:8080/v1/jobs/j/stream"
    assert req.headers["Last-Event-ID"] == "3-0"
    assert req.params == (("level", "warning"),), "the start parameters are the cursor's now"


@pytest.mark.parametrize("gaps", ["raise", "yield"])
def test_a_gap_raises_or_is_yielded_and_the_cursor_passes_it(gaps: str) -> None:
    s = new(gaps=gaps)
    w = connect(s)
    gap = {"after": "0-0", "first_available": "7-0", "reason": "trimmed"}
    text = frame(gap, "6-9", "gap") + frame(entry(7), "7-0")
    if gaps == "raise":
        with pytest.raises(GapError) as e:
            w.feed(text)
        assert (e.value.after, e.value.first_available, e.value.reason) == ("0-0", "7-0", "trimmed")
        assert s.done and s.cursor == "6-9", "a new follow(after=cursor) goes on past the hole"
    else:
        got = w.feed(text)
        assert got[0] == Gap("0-0", "7-0", "trimmed") and isinstance(got[1], LogEntry)
        assert s.cursor == "7-0" and not s.done


@pytest.mark.parametrize("gaps", ["raise", "yield"])
def test_a_reset_raises_or_is_yielded_and_the_stream_starts_again(gaps: str) -> None:
    """The job's data was lost: ``event: reset`` with ``id: 0-0``, then the job from its new
    beginning; what the client held is not part of the job any more, and it is told so."""
    s = new(gaps=gaps)
    w = connect(s)
    w.feed(frame(entry(41), "41-0") + frame(entry(42), "42-0"))
    reset = {"after": "42-0", "first_available": "50-0", "reason": "data_lost"}
    text = frame(reset, "0-0", "reset") + frame(entry(50), "50-0")
    if gaps == "raise":
        with pytest.raises(ResetError) as e:
            w.feed(text)
        assert (e.value.after, e.value.first_available, e.value.reason) == ("42-0", "50-0", "data_lost")
        assert s.done and s.cursor == "0-0"
        return
    got = w.feed(text)
    assert got[0] == Reset("42-0", "50-0", "data_lost")
    assert isinstance(got[1], LogEntry) and got[1].id == "50-0" and s.cursor == "50-0"
    empty = {"after": "50-0", "first_available": None, "reason": "data_lost"}
    assert w.feed(frame(empty, "0-0", "reset")) == [Reset("50-0", None, "data_lost")]
    with pytest.raises(Exception) as dropped:
        s.closed()
    s.failed(dropped.value)
    assert s.request().headers["Last-Event-ID"] == "0-0", "a reconnect starts at the new beginning"


@pytest.mark.parametrize(
    "text",
    [
        "data: {not json\nid: 1-0\n\n",
        frame({"id": "1-0"}, "1-0"),  # keys missing
        frame(entry(1, line="1"), "1-0"),  # mistyped
        frame(entry(1, line=True), "1-0"),
        frame(entry(2), "1-0"),  # the event id is not the entry's
        frame({"after": "0-0", "reason": "trimmed"}, "1-0", "gap"),
        frame({"after": 5, "first_available": None, "reason": "data_lost"}, "0-0", "reset"),
        "data: [1, 2]\nid: 1-0\n\n",
    ],
)
def test_data_that_is_not_the_protocol_is_a_protocol_error(text: str) -> None:
    w = connect(new())
    with pytest.raises(ProtocolError):
        w.feed(text)


def test_unknown_events_are_skipped_but_their_id_counts_and_newer_keys_are_ignored() -> None:
    s = new()
    w = connect(s)
    got = w.feed(frame({"x": 1}, "2-0", "future") + frame({**entry(3), "new_key": 1}, "3-0"))
    assert [e.id for e in got if isinstance(e, LogEntry)] == ["3-0"] and s.cursor == "3-0"


def test_log_entry_keeps_the_wire_shape() -> None:
    e = entry(1, fields={"item": {"n": [1, 2]}})
    parsed = connect(new()).feed(frame(e, "1-0"))[0]
    assert isinstance(parsed, LogEntry)
    assert parsed.to_dict() == e and list(parsed.to_dict()) == list(e), "§2 keys, in order"
    assert parsed.datetime.isoformat() == "2026-11-28T15:00:00.123000+00:00"
    assert parsed.totals is None
    with pytest.raises(AttributeError):
        parsed.msg = "changed"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("status", "body", "error", "code"),
    [
        (400, b'{"error": {"code": "invalid_job", "message": "bad id"}}', BadRequest, "invalid_job"),
        (401, b'{"error": {"code": "unauthorized", "message": "no token"}}', Unauthorized, "unauthorized"),
        (403, b'{"error": {"code": "forbidden", "message": "not yours"}}', Forbidden, "forbidden"),
        (404, b'{"error": {"code": "not_found", "message": "no route"}}', NotFound, "not_found"),
        (405, b'{"error": {"code": "method_not_allowed", "message": "GET"}}', Refused, "method_not_allowed"),
        (404, b"<html>nginx</html>", NotFound, "http_404"),
    ],
)
def test_refusals_raise_their_class_with_the_servers_code(
    status: int, body: bytes, error: type[Refused], code: str
) -> None:
    s = new()
    s.request()
    with pytest.raises(error) as e:
        s.answer(status, JSON_TYPE, body)
    assert type(e.value) is error and e.value.status == status and e.value.code == code
    assert e.value.url == f"{BASE}/v1/jobs/j/stream" and code in str(e.value)


def test_204_stops_and_5xx_is_retried_after_retry_after() -> None:
    s = new()
    s.request()
    with pytest.raises(ServerError) as e:
        body = b'{"error": {"code": "redis_unavailable", "message": "x"}}'
        s.answer(503, {"retry-after": "3", **JSON_TYPE}, body)
    assert e.value.code == "redis_unavailable" and e.value.retry_after_s == 3
    assert s.failed(e.value) == 3, "Retry-After is waited at least"
    with pytest.raises(ServerError):
        s.answer(502, {}, b"Bad Gateway")
    with pytest.raises(ProtocolError):
        s.answer(200, {"content-type": "text/html"}, None)
    assert s.answer(204, {}, b"") is False and s.done and s.past_end


def test_a_start_from_now_is_pinned_to_the_jobs_last_id_first() -> None:
    """``after="$"`` sent as such would mean "now" again on every reconnect before the first
    event, skipping what was written meanwhile: it is read once, then resumed from."""
    s = new(after="$")
    req = s.request()
    assert not req.stream and req.url == f"{BASE}/v1/jobs/j"
    assert s.answer(200, JSON_TYPE, json.dumps({"last_id": "9-3"}).encode()) is False
    assert s.request().headers["Last-Event-ID"] == "9-3"
    unknown = new(tail=0)
    unknown.request()
    unknown.answer(404, JSON_TYPE, b'{"error": {"code": "job_not_found", "message": "x"}}')
    assert unknown.request().headers["Last-Event-ID"] == "0-0", "nothing stored yet: all of it is new"
    wrong = new(after="$")
    wrong.request()
    with pytest.raises(NotFound):
        wrong.answer(404, JSON_TYPE, b'{"error": {"code": "not_found", "message": "no route"}}')


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_backoff_doubles_with_jitter_follows_the_advice_and_resets() -> None:
    low, high = (
        Backoff(Retry(initial_ms=100, max_ms=1000), rand=lambda: 0.0),
        Backoff(Retry(initial_ms=100, max_ms=1000), rand=lambda: 1.0),
    )
    err = ConnectionError("x")
    assert [round(low.failed(err, "u"), 3) for _ in range(6)] == [0.05, 0.1, 0.2, 0.4, 0.5, 0.5]
    assert [round(high.failed(err, "u"), 3) for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    high.succeeded()
    high.advice_ms = 2000  # the gateway's retry:, above max_ms: it is the floor and the cap
    assert [high.failed(err, "u") for _ in range(2)] == [2.0, 2.0]


def test_backoff_bounds_raise_a_clear_error_with_the_last_failure() -> None:
    b = Backoff(Retry(max_attempts=3, max_elapsed_s=None))
    b.failed(OSError("refused"), "u")
    b.failed(OSError("refused"), "u")
    with pytest.raises(RetriesExhausted) as e:
        b.failed(OSError("refused again"), "http://gw/v1/jobs/j/stream")
    assert e.value.attempts == 3 and isinstance(e.value.__cause__, OSError)
    assert "gave up on http://gw/v1/jobs/j/stream after 3 failed attempts" in str(e.value)
    clock = Clock()
    t = Backoff(Retry(initial_ms=1000, max_ms=8000, max_elapsed_s=10.0), clock=clock, rand=lambda: 1.0)
    t.attempt()  # at 0: an attempt that will fail, say after a connect timeout
    clock.t = 9.5
    assert t.failed(OSError(), "u") == 0.5, "never waits past the bound: the last try is at it"
    t.attempt()
    clock.t = 10.0
    with pytest.raises(RetriesExhausted) as e:
        t.failed(OSError(), "u")
    assert e.value.elapsed_s == 10.0


def test_the_time_bound_counts_failures_not_a_long_healthy_stream() -> None:
    """A stream that ran for longer than ``max_elapsed_s`` and then dropped is resumed: the
    bound is on how long the failures last."""
    clock = Clock()
    s = new(retry=Retry(initial_ms=100, max_ms=100, max_elapsed_s=10.0))
    s.c.backoff = Backoff(s.c.backoff.policy, clock=clock, rand=lambda: 1.0)
    connect(s).feed(frame(entry(1), "1-0"))
    clock.t = 3600.0
    assert s.failed(StreamEndedError("dropped")) == 0.1
    s.request()
    clock.t = 3605.0
    assert s.failed(OSError()) == 0.1, "5 s of failures: still within the bound"
    s.request()
    clock.t = 3610.0
    with pytest.raises(RetriesExhausted):
        s.failed(OSError())


def test_options_are_checked_when_made() -> None:
    for bad in ({"gaps": "ignore"}, {"tail": -1}, {"tail": True}, {"base": "gw:8080"}, {"base": []}):
        with pytest.raises(InvalidConfig):
            new(**bad)
    for retry in (
        {"initial_ms": 0},
        {"initial_ms": 10, "max_ms": 5},
        {"max_attempts": 0},
        {"max_elapsed_s": -1},
    ):
        with pytest.raises(InvalidConfig):
            Retry(**retry)
    with pytest.raises(InvalidConfig):
        replay(order="up")
    with pytest.raises(TypeError, match="unexpected options \\['levle'\\]"):
        follow_state(BASE, "j", levle="error")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected options \\['tail'\\]"):
        replay_state(BASE, "j", tail=5)  # type: ignore[call-arg]


# --- replay pages --------------------------------------------------------------------------------


def replay(**kw: Any) -> ReplayState:
    args: dict[str, Any] = dict(after=None, before=None, step=None, worker=None, level=None, kind=None,
                                order="asc", limit=None, page_size=2, token=None, gaps="raise",
                                retry=None, on_retry=None)  # fmt: skip
    return replay_state(BASE, "j", **{**args, **kw})


def page(ids: list[int], next_id: str | None, **markers: Any) -> bytes:
    return json.dumps({"entries": [entry(i) for i in ids], "next": next_id, "gap": None, **markers}).encode()


def test_pages_follow_next_and_stop_at_the_limit() -> None:
    r = replay(after="1-0", step="s", limit=3)
    req = r.request()
    assert req.url == f"{BASE}/v1/jobs/j/logs"
    assert req.params == (("step", "s"), ("order", "asc"), ("after", "1-0"), ("limit", "2"))
    assert [e.id for e in r.answer(200, JSON_TYPE, page([2, 3], "3-0"))] == ["2-0", "3-0"]  # type: ignore[union-attr]
    req = r.request()
    assert ("after", "3-0") in req.params and ("limit", "1") in req.params
    assert [e.id for e in r.answer(200, JSON_TYPE, page([4], "4-0"))] == ["4-0"]  # type: ignore[union-attr]
    assert r.done, "limit reached"
    desc = replay(order="desc")
    list(desc.answer(200, JSON_TYPE, page([9, 8], "8-0")))
    assert ("before", "8-0") in desc.request().params
    list(desc.answer(200, JSON_TYPE, page([7], None)))
    assert desc.done


def test_a_gap_in_a_page_surfaces_where_the_hole_is() -> None:
    gap = {"after": "0-0", "first_available": "5-0", "reason": "trimmed"}
    asc = replay(gaps="yield")
    assert next(asc.answer(200, JSON_TYPE, page([5], None, gap=gap))) == Gap("0-0", "5-0", "trimmed")
    desc = replay(order="desc", gaps="yield")
    assert list(desc.answer(200, JSON_TYPE, page([6, 5], None, gap=gap)))[-1] == Gap("0-0", "5-0", "trimmed")
    raised = replay()
    items = raised.answer(200, JSON_TYPE, page([5], None, gap=gap))
    with pytest.raises(GapError):
        next(items)  # ascending: before the entries after the hole
    raised_desc = replay(order="desc")
    items = raised_desc.answer(200, JSON_TYPE, page([6, 5], None, gap=gap))
    assert [next(items).id, next(items).id] == ["6-0", "5-0"]  # type: ignore[union-attr]  # descending: the hole is below them
    with pytest.raises(GapError):
        next(items)


@pytest.mark.parametrize("gaps", ["raise", "yield"])
def test_a_reset_in_a_page_comes_first(gaps: str) -> None:
    reset = {"after": "42-0", "first_available": "50-0", "reason": "data_lost"}
    r = replay(after="42-0", gaps=gaps)
    items = r.answer(200, JSON_TYPE, page([50], None, reset=reset))
    if gaps == "raise":
        with pytest.raises(ResetError):
            next(items)
    else:
        assert list(items) == [Reset("42-0", "50-0", "data_lost"), LogEntry(**entry(50))]


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b'{"next": null}',
        b'{"entries": [{"id": "1-0"}], "next": null}',
        b'{"entries": [], "next": "1-0"}',  # next does not move on from after=1-0
        b'{"entries": [], "next": 5}',
        b"not json",
    ],
)
def test_a_page_that_is_not_the_protocol_is_a_protocol_error(body: bytes) -> None:
    r = replay(after="1-0")
    r.request()
    with pytest.raises(ProtocolError):
        list(r.answer(200, JSON_TYPE, body))
    with pytest.raises(ProtocolError):
        replay().answer(200, {"content-type": "text/html"}, b"<html>")
