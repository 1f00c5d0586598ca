"""The thread transports: ``follow_sync`` and ``read_sync`` over one ``httpx.Client``.

The same thin loops as ``aio``, blocking: requests, meanings, the cursor and the waits come from
``state``. Each iterator is also a context manager, so leaving a ``with`` block (or breaking out
of a loop inside one) closes the connection; it owns the client it made and never closes one it
was given.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Sequence
from types import TracebackType
from typing import Any, Generic, Literal, Self, Unpack, cast, overload

import httpx
from httpx_sse import EventSource

from .aio import DEFAULT_TIMEOUT, RETRYABLE, T
from .entries import LogEntry
from .responses import ERROR_BODY_BYTES
from .state import (
    FollowOptions,
    FollowState,
    Gaps,
    Item,
    ReadOptions,
    ReplayState,
    follow_state,
    replay_state,
)


class _Source(Generic[T]):
    """An iterator and context manager over ``_run``; closes what it owns when done."""

    def __init__(self, client: httpx.Client | None, timeout: httpx.Timeout | None) -> None:
        self._given = client
        self._client: httpx.Client | None = None
        self._timeout = timeout or DEFAULT_TIMEOUT
        self._items: Generator[Item, None, None] | None = None
        self._closed = False

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> T:
        if self._closed:
            raise StopIteration
        if self._items is None:
            self._items = self._run(self._http())
        try:
            return cast(T, next(self._items))
        except Exception:  # StopIteration included: nothing more will come
            self.close()
            raise

    def close(self) -> None:
        self._closed = True
        items, self._items = self._items, None
        if items is not None:
            items.close()
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def _http(self) -> httpx.Client:
        if self._given is not None:
            return self._given
        self._client = httpx.Client(timeout=self._timeout)
        return self._client

    def _run(self, http: httpx.Client) -> Generator[Item, None, None]:
        raise NotImplementedError


class FollowSync(_Source[T]):
    """``with follow_sync(...) as entries: for e in entries``: see :func:`follow_sync`."""

    def __init__(self, state: FollowState, client: httpx.Client | None, timeout: httpx.Timeout | None):
        super().__init__(client, timeout)
        self.state = state

    @property
    def cursor(self) -> str:
        """The last event id received: ``follow_sync(..., after=cursor)`` continues from here."""
        return self.state.cursor

    @property
    def end(self) -> LogEntry | None:
        return self.state.end

    @property
    def past_end(self) -> bool:
        """The gateway answered 204: the start was at or past the job's end, nothing to read."""
        return self.state.past_end

    @property
    def connections(self) -> int:
        return self.state.connections

    def _run(self, http: httpx.Client) -> Generator[Item, None, None]:
        s = self.state
        while not s.done:
            req = s.request()
            try:
                if not req.stream:
                    r = http.get(req.url, params=req.params, headers=req.headers, timeout=self._timeout)
                    s.answer(r.status_code, r.headers, r.content)
                    continue
                with http.stream(
                    "GET", req.url, params=req.params, headers=req.headers, timeout=self._timeout
                ) as r:
                    if not s.answer(r.status_code, r.headers, None if r.status_code == 200 else _head(r)):
                        continue
                    for sse in EventSource(r).iter_sse():
                        item = s.event(sse.event, sse.data, sse.id, sse.retry)
                        if item is not None:
                            yield item
                        if s.done:
                            return
                    s.closed()
            except RETRYABLE as e:
                time.sleep(s.failed(e))


class ReplaySync(_Source[T]):
    """``with read_sync(...) as entries: for e in entries``: see :func:`read_sync`."""

    def __init__(self, state: ReplayState, client: httpx.Client | None, timeout: httpx.Timeout | None):
        super().__init__(client, timeout)
        self.state = state

    def _run(self, http: httpx.Client) -> Generator[Item, None, None]:
        s = self.state
        while not s.done:
            req = s.request()
            try:
                r = http.get(req.url, params=req.params, headers=req.headers, timeout=self._timeout)
                items = s.answer(r.status_code, r.headers, r.content)
            except RETRYABLE as e:
                time.sleep(s.failed(e))
                continue
            yield from items


def _head(r: httpx.Response) -> bytes:
    body = bytearray()
    for chunk in r.iter_bytes():
        body += chunk
        if len(body) >= ERROR_BODY_BYTES:
            break
    return bytes(body)


@overload
def follow_sync(
    base_url: str | Sequence[str],
    job: str,
    *,
    gaps: Literal["raise"] = "raise",
    client: httpx.Client | None = None,
    timeout: httpx.Timeout | None = None,
    **options: Unpack[FollowOptions],
) -> FollowSync[LogEntry]: ...
@overload
def follow_sync(
    base_url: str | Sequence[str],
    job: str,
    *,
    gaps: Literal["yield"],
    client: httpx.Client | None = None,
    timeout: httpx.Timeout | None = None,
    **options: Unpack[FollowOptions],
) -> FollowSync[Item]: ...
def follow_sync(
    base_url: str | Sequence[str],
    job: str,
    *,
    gaps: Gaps = "raise",
    client: httpx.Client | None = None,
    timeout: httpx.Timeout | None = None,
    **options: Unpack[FollowOptions],
) -> FollowSync[Any]:
    """:func:`broker.client.follow` for threads: the same options, a plain iterator."""
    return FollowSync(follow_state(base_url, job, gaps=gaps, **options), client, timeout)


@overload
def read_sync(
    base_url: str | Sequence[str],
    job: str,
    *,
    gaps: Literal["raise"] = "raise",
    client: httpx.Client | None = None,
    timeout: httpx.Timeout | None = None,
    **options: Unpack[ReadOptions],
) -> ReplaySync[LogEntry]: ...
@overload
def read_sync(
    base_url: str | Sequence[str],
    job: str,
    *,
    gaps: Literal["yield"],
    client: httpx.Client | None = None,
    timeout: httpx.Timeout | None = None,
    **options: Unpack[ReadOptions],
) -> ReplaySync[Item]: ...
def read_sync(
    base_url: str | Sequence[str],
    job: str,
    *,
    gaps: Gaps = "raise",
    client: httpx.Client | None = None,
    timeout: httpx.Timeout | None = None,
    **options: Unpack[ReadOptions],
) -> ReplaySync[Any]:
    """:func:`broker.client.read` for threads: the same options, a plain iterator."""
    return ReplaySync(replay_state(base_url, job, gaps=gaps, **options), client, timeout)
