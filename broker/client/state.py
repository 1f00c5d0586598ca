"""The one resume core behind ``follow``/``follow_sync`` and ``read``/``read_sync`` (sans-IO).

It decides everything and does no I/O: which request comes next (URL, query, ``Last-Event-ID``),
what an answer means (``responses.check_status``), what an SSE event yields, where the cursor is,
and how long to wait after a failure (``retry.Backoff``). The transports in ``stream`` and
``replay`` only move bytes, asyncio or threads alike, so both behave the same by construction.

Stream protocol: docs/design.md §5 "GET /v1/jobs/{job}/stream". The cursor is the last event id
seen, including the id-only events that filters send; every reconnect sends it as
``Last-Event-ID``, to whichever gateway answers. A start that means "from now" (``after="$"``,
``tail=0``) is pinned first by reading the job's ``last_id`` (``GET /v1/jobs/{job}``; a job that
does not exist yet starts at ``0-0``), so a connection lost before the first event cannot skip
what was written meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypedDict, Unpack
from urllib.parse import quote

from ..errors import InvalidConfig
from .entries import Gap, LogEntry, Marker, Reset, entry_of, gap_of, parse_json, reset_of
from .errors import GapError, NotFound, ProtocolError, ResetError, StreamEnded
from .responses import check_status, media_type
from .retry import Backoff, Retry

Gaps = Literal["raise", "yield"]
Item = LogEntry | Gap | Reset
Kind = str | Iterable[str]
EVENT_STREAM = "text/event-stream"
JSON = "application/json"
ZERO = "0-0"


class RetryHook(Protocol):
    """Told of each failure that will be retried, before the wait (``logbroker tail`` says it)."""

    def __call__(self, error: BaseException, delay_s: float) -> None: ...


@dataclass(frozen=True, slots=True)
class Request:
    url: str
    params: tuple[tuple[str, str], ...]
    headers: dict[str, str]
    stream: bool  # an SSE stream: its body is events, read only after a 200


@dataclass(slots=True)
class _Common:
    """Base URLs, job, filters, auth and pacing: what a stream and a replay share."""

    bases: list[str]
    job: str
    filters: list[tuple[str, str]]
    token: str | None
    gaps: Gaps
    backoff: Backoff
    on_retry: RetryHook | None
    url: str = ""  # the last request's, for error messages
    _turn: int = 0  # the base URL tried next: the next one after each failure

    def path_url(self, suffix: str) -> str:
        """The next request's URL; counts as the start of an attempt."""
        self.backoff.attempt()
        self.url = f"{self.bases[self._turn % len(self.bases)]}/v1/jobs/{quote(self.job, safe='')}{suffix}"
        return self.url

    def headers(self, accept: str) -> dict[str, str]:
        h = {"Accept": accept}
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        return h

    def failed(self, error: BaseException) -> float:
        """The wait before trying again (the next base URL), or ``RetriesExhausted``."""
        delay_s = self.backoff.failed(error, self.url)
        self._turn += 1
        if self.on_retry is not None:
            self.on_retry(error, delay_s)
        return delay_s

    def surface(self, marker: Marker) -> Marker:
        if self.gaps == "yield":
            return marker
        raise GapError(marker) if isinstance(marker, Gap) else ResetError(marker)


def common(
    base_url: str | Sequence[str],
    job: str,
    *,
    step: str | None,
    worker: str | None,
    level: str | None,
    kind: Kind | None,
    token: str | None,
    gaps: Gaps,
    retry: Retry,
    on_retry: RetryHook | None,
    clock: Callable[[], float] = time.monotonic,
) -> _Common:
    bases = [base_url] if isinstance(base_url, str) else list(base_url)
    if not bases or not all(isinstance(b, str) and b.startswith(("http://", "https://")) for b in bases):
        raise InvalidConfig(f"base_url must be http:// or https:// URLs, got {base_url!r}")
    if gaps not in ("raise", "yield"):
        raise InvalidConfig(f"gaps must be 'raise' or 'yield', got {gaps!r}")
    if not isinstance(job, str) or not job:
        raise InvalidConfig(f"job must be a non-empty string, got {job!r}")
    kinds = kind if kind is None or isinstance(kind, str) else ",".join(kind)
    filters = [
        (k, v) for k, v in (("step", step), ("worker", worker), ("level", level), ("kind", kinds)) if v
    ]
    return _Common([b.rstrip("/") for b in bases], job, filters, token, gaps, Backoff(retry, clock), on_retry)


@dataclass(slots=True)
class FollowState:
    """One follow: the cursor, the start, and whether the job's end was reached."""

    c: _Common
    after: str | None = None
    tail: int | None = None
    cursor: str = ""  # the last event id: where a reconnect resumes
    connections: int = 0  # streams opened
    end: LogEntry | None = None  # the job's end entry, once received
    past_end: bool = False  # the gateway answered 204: the cursor was at or past the job's end
    done: bool = False
    _pin: bool = field(init=False)  # the start means "now": pin it to the job's last id first

    def __post_init__(self) -> None:
        if self.tail is not None and (
            isinstance(self.tail, bool) or not isinstance(self.tail, int) or self.tail < 0
        ):
            raise InvalidConfig(f"tail must be an integer >= 0, got {self.tail!r}")
        self._pin = (self.after is None and self.tail == 0) or (self.after or "").strip() == "$"

    def request(self) -> Request:
        if self._pin:
            return Request(self.c.path_url(""), (), self.c.headers(JSON), stream=False)
        params = list(self.c.filters)
        headers = self.c.headers(EVENT_STREAM) | {"Cache-Control": "no-store"}
        if self.cursor:
            headers["Last-Event-ID"] = self.cursor
        elif self.after is not None:
            params.append(("after", self.after))
        elif self.tail is not None:
            params.append(("tail", str(self.tail)))
        return Request(self.c.path_url("/stream"), tuple(params), headers, stream=True)

    def answer(self, status: int, headers: Mapping[str, str], body: bytes | None) -> bool:
        """Whether to read events now; raises what a refusal or failure means."""
        if self._pin:
            return self._pinned(status, headers, body or b"")
        if status == 204:  # §5: the cursor is at or past the end; EventSource stops here too
            self.done = self.past_end = True
            return False
        check_status(status, headers, body or b"", self.c.url)
        if status != 200 or media_type(headers) != EVENT_STREAM:
            raise ProtocolError(
                f"{self.c.url} answered {status} {media_type(headers)!r}, not an event stream"
            )
        self.connections += 1
        self.c.backoff.succeeded()
        return True

    def _pinned(self, status: int, headers: Mapping[str, str], body: bytes) -> bool:
        try:
            check_status(status, headers, body, self.c.url)
        except NotFound as e:
            if e.code != "job_not_found":
                raise
            self.cursor = ZERO  # nothing stored yet: all of it is new
        else:
            meta = parse_json(body, f"{self.c.url} answer")
            last = meta.get("last_id") if isinstance(meta, dict) else None
            self.cursor = last if isinstance(last, str) and last else ZERO
        self._pin = False
        self.c.backoff.succeeded()
        return False

    def event(self, event: str, data: str, event_id: str, retry_ms: int | None) -> Item | None:
        """What an SSE event yields (None: nothing to dispatch), the cursor moved past it."""
        if retry_ms is not None:
            self.c.backoff.advice_ms = retry_ms
        if event_id:
            self.cursor = event_id
        if not data:  # WHATWG: not dispatched; its id still counts (filters move cursors so)
            return None
        if event in ("message", "end"):
            entry = entry_of(parse_json(data, "an event's data"))
            if entry.id != event_id:
                raise ProtocolError(f"event id {event_id!r:.40} is not its entry's {entry.id!r:.40}")
            if event == "end":
                self.done, self.end = True, entry
            return entry
        if event == "gap":
            return self._surface(gap_of(parse_json(data, "a gap event's data")))
        if event == "reset":
            return self._surface(reset_of(parse_json(data, "a reset event's data")))
        return None  # an event type this client does not know: skipped, its id kept

    def _surface(self, marker: Marker) -> Marker:
        try:
            return self.c.surface(marker)
        except (GapError, ResetError):
            self.done = True
            raise

    def closed(self) -> None:
        """The server ended the stream: fine after the end event, else a drop to resume from."""
        if not self.done:
            raise StreamEnded(f"{self.c.url} closed the stream before the job's end")

    def failed(self, error: BaseException) -> float:
        return self.c.failed(error)


@dataclass(slots=True)
class ReplayState:
    """One read: pages of ``GET /v1/jobs/{job}/logs`` (§5 replay), each from the last ``next``."""

    c: _Common
    after: str | None
    before: str | None
    order: str
    limit: int | None
    page_size: int
    done: bool = False
    pages: int = 0

    def __post_init__(self) -> None:
        if self.order not in ("asc", "desc"):
            raise InvalidConfig(f"order must be 'asc' or 'desc', got {self.order!r}")
        if self.limit is not None and not (isinstance(self.limit, int) and self.limit >= 0):
            raise InvalidConfig(f"limit must be an integer >= 0 or None, got {self.limit!r}")
        if not (isinstance(self.page_size, int) and self.page_size >= 1):
            raise InvalidConfig(f"page_size must be an integer >= 1, got {self.page_size!r}")
        self.done = self.limit == 0

    def request(self) -> Request:
        params = [*self.c.filters, ("order", self.order)]
        params += [(k, v) for k, v in (("after", self.after), ("before", self.before)) if v is not None]
        size = self.page_size if self.limit is None else min(self.page_size, self.limit)
        params.append(("limit", str(size)))
        return Request(self.c.path_url("/logs"), tuple(params), self.c.headers(JSON), stream=False)

    def answer(self, status: int, headers: Mapping[str, str], body: bytes) -> Iterator[Item]:
        """The page's entries and markers in reading order; a marker raises where it stands
        (before an ascending page's entries, after a descending one's) unless ``gaps="yield"``."""
        check_status(status, headers, body, self.c.url)
        if status != 200 or media_type(headers) != JSON:
            raise ProtocolError(f"{self.c.url} answered {status} {media_type(headers)!r}, not a JSON page")
        self.c.backoff.succeeded()
        page = parse_json(body, f"{self.c.url} page")
        if not isinstance(page, dict) or not isinstance(page.get("entries"), list):
            raise ProtocolError(f"{self.c.url}: a page is {{entries, next, gap}}, got {str(page)[:200]!r}")
        entries = [entry_of(e) for e in page["entries"]]
        markers: list[Marker] = [reset_of(page["reset"])] if page.get("reset") is not None else []
        if page.get("gap") is not None:
            markers.append(gap_of(page["gap"]))
        self._advance(page.get("next"))
        if self.limit is not None:
            entries = entries[: self.limit]
            self.limit -= len(entries)
            self.done = self.done or self.limit == 0
        items: list[Item] = [*entries, *markers] if self.order == "desc" else [*markers, *entries]
        return self._deliver(items)

    def _advance(self, next_id: object) -> None:
        self.pages += 1
        if next_id is None:
            self.done = True
            return
        current = self.before if self.order == "desc" else self.after
        if not isinstance(next_id, str) or not next_id or next_id == current:
            raise ProtocolError(f"{self.c.url}: next {next_id!r:.40} does not continue after {current!r}")
        if self.order == "desc":
            self.before = next_id
        else:
            self.after = next_id

    def _deliver(self, items: list[Item]) -> Iterator[Item]:
        for item in items:
            if isinstance(item, Gap | Reset):
                try:
                    yield self.c.surface(item)
                except (GapError, ResetError):
                    self.done = True
                    raise
            else:
                yield item

    def failed(self, error: BaseException) -> float:
        return self.c.failed(error)


class CommonOptions(TypedDict, total=False):
    """Options of every read: filters (docs/design.md §5, as the stream and replay take them),
    the token (sent as ``Authorization: Bearer``), the retry bounds and a hook told of retries."""

    step: str | None
    worker: str | None
    level: str | None  # the minimum level
    kind: Kind | None  # one kind or several
    token: str | None
    retry: Retry | None  # default Retry()
    on_retry: RetryHook | None


class FollowOptions(CommonOptions, total=False):
    """``after``: a stream id, or ``"$"`` (only what is written from now); else ``tail``: the N
    newest matching entries, then live; else the job from its beginning (docs/design.md §5)."""

    after: str | None
    tail: int | None


class ReadOptions(CommonOptions, total=False):
    """``after``/``before``: exclusive bounds; ``order`` asc (default) or desc; ``limit``: at most
    that many entries in all; ``page_size`` per request (default 1000, at most the gateway's
    ``LOGBROKER_REPLAY_MAX_LIMIT``)."""

    after: str | None
    before: str | None
    order: str
    limit: int | None
    page_size: int


def _common(
    base_url: str | Sequence[str], job: str, gaps: Gaps, o: CommonOptions, known: frozenset[str]
) -> _Common:
    if unknown := set(o) - known:  # what a type checker says, said at run time: no silent default
        raise TypeError(f"unexpected options {sorted(unknown)}; the options are {sorted(known)}")
    return common(
        base_url, job, step=o.get("step"), worker=o.get("worker"), level=o.get("level"),
        kind=o.get("kind"), token=o.get("token"), gaps=gaps, retry=o.get("retry") or Retry(),
        on_retry=o.get("on_retry"),
    )  # fmt: skip


def follow_state(
    base_url: str | Sequence[str], job: str, *, gaps: Gaps = "raise", **options: Unpack[FollowOptions]
) -> FollowState:
    c = _common(base_url, job, gaps, options, FollowOptions.__optional_keys__)
    return FollowState(c, options.get("after"), options.get("tail"))


def replay_state(
    base_url: str | Sequence[str], job: str, *, gaps: Gaps = "raise", **options: Unpack[ReadOptions]
) -> ReplayState:
    o = options
    c = _common(base_url, job, gaps, o, ReadOptions.__optional_keys__)
    return ReplayState(
        c, after=o.get("after"), before=o.get("before"), order=o.get("order", "asc"),
        limit=o.get("limit"), page_size=o.get("page_size", 1000),
    )  # fmt: skip
