"""The asyncio transports: ``follow`` and ``read`` over one ``httpx.AsyncClient``.

Thin loops: the requests, what answers and events mean, the cursor and the waits all come from
``state`` (shared with the thread transports in ``sync``); this module only sends, reads and
sleeps. The iterator owns the client it made (closed with it) and never closes one it was given.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from types import TracebackType
from typing import Any, Generic, Literal, Self, TypeVar, Unpack, cast, overload

import httpx
from httpx_sse import EventSource

from .entries import LogEntry
from .errors import ServerError, StreamEnded
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

# read: 4 heartbeats (docs/design.md §5, 15 s): a half-open connection is found and resumed
DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=60.0, write=10.0, pool=10.0)
RETRYABLE = (httpx.TransportError, ServerError, StreamEnded)
T = TypeVar("T", bound=Item)  # what an iterator yields: entries, or entries and markers (gaps="yield")


class _Source(Generic[T]):
    """An async iterator and context manager over ``_run``; closes what it owns when done."""

    def __init__(self, client: httpx.AsyncClient | None, timeout: httpx.Timeout | None) -> None:
        self._given = client
        self._client: httpx.AsyncClient | None = None
        self._timeout = timeout or DEFAULT_TIMEOUT
        self._items: AsyncGenerator[Item, None] | None = None
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        if self._closed:
            raise StopAsyncIteration
        if self._items is None:
            self._items = self._run(self._http())
        try:
            return cast(T, await anext(self._items))
        except Exception:  # StopAsyncIteration included: nothing more will come
            await self.aclose()
            raise

    async def aclose(self) -> None:
        self._closed = True
        items, self._items = self._items, None
        if items is not None:
            await items.aclose()
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def _http(self) -> httpx.AsyncClient:
        if self._given is not None:
            return self._given
        self._client = httpx.AsyncClient(timeout=self._timeout)
        return self._client

    def _run(self, http: httpx.AsyncClient) -> AsyncGenerator[Item, None]:
        raise NotImplementedError


class Follow(_Source[T]):
    """``async with follow(...) as entries: async for e in entries``: see :func:`follow`."""

    def __init__(self, state: FollowState, client: httpx.AsyncClient | None, timeout: httpx.Timeout | None):
        super().__init__(client, timeout)
        self.state = state

    @property
    def cursor(self) -> str:
        """The last event id received: ``follow(..., after=cursor)`` continues from here."""
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

    async def _run(self, http: httpx.AsyncClient) -> AsyncGenerator[Item, None]:
        s = self.state
        while not s.done:
            req = s.request()
            try:
                if not req.stream:
                    r = await http.get(req.url, params=req.params, headers=req.headers, timeout=self._timeout)
                    s.answer(r.status_code, r.headers, r.content)
                    continue
                async with http.stream(
                    "GET", req.url, params=req.params, headers=req.headers, timeout=self._timeout
                ) as r:
                    if not s.answer(
                        r.status_code, r.headers, None if r.status_code == 200 else await _head(r)
                    ):
                        continue
                    async for sse in EventSource(r).aiter_sse():
                        item = s.event(sse.event, sse.data, sse.id, sse.retry)
                        if item is not None:
                            yield item
                        if s.done:
                            return
                    s.closed()
            except RETRYABLE as e:
                await asyncio.sleep(s.failed(e))


class Replay(_Source[T]):
    """``async with read(...) as entries: async for e in entries``: see :func:`read`."""

    def __init__(self, state: ReplayState, client: httpx.AsyncClient | None, timeout: httpx.Timeout | None):
        super().__init__(client, timeout)
        self.state = state

    async def _run(self, http: httpx.AsyncClient) -> AsyncGenerator[Item, None]:
        s = self.state
        while not s.done:
            req = s.request()
            try:
                r = await http.get(req.url, params=req.params, headers=req.headers, timeout=self._timeout)
                items = s.answer(r.status_code, r.headers, r.content)
            except RETRYABLE as e:
                await asyncio.sleep(s.failed(e))
                continue
            for item in items:
                yield item


async def _head(r: httpx.Response) -> bytes:
    """The start of an error answer: enough for its message, however long it is."""
    body = bytearray()
    async for chunk in r.aiter_bytes():
        body += chunk
        if len(body) >= ERROR_BODY_BYTES:
            break
    return bytes(body)


@overload
def follow(
    base_url: str | Sequence[str],
    job: str,
    *,
    gaps: Literal["raise"] = "raise",
    client: httpx.AsyncClient | None = None,
    timeout: httpx.Timeout | None = None,
    **options: Unpack[FollowOptions],
) -> Follow[LogEntry]: ...
@overload
def follow(
    base_url: str | Sequence[str],
    job: str,
    *,
    gaps: Literal["yield"],
    client: httpx.AsyncClient | None = None,
    timeout: httpx.Timeout | None = None,
    **options: Unpack[FollowOptions],
) -> Follow[Item]: ...
def follow(
    base_url: str | Sequence[str],
    job: str,
    *,
    gaps: Gaps = "raise",
    client: httpx.AsyncClient | None = None,
    timeout: httpx.Timeout | None = None,
    **options: Unpack[FollowOptions],
) -> Follow[Any]:
    """Follow a job's stream to its end entry (yielded last), resuming through any failure.

    Options (:class:`~broker.client.state.FollowOptions`): the start (``after``, ``tail``),
    filters, ``token``, ``retry``, ``on_retry``. Lost data raises :class:`GapError` /
    :class:`ResetError`; with ``gaps="yield"`` it comes as :class:`Gap` / :class:`Reset` markers
    among the entries. Several base URLs are tried in turn after failures. Iteration ends after
    the end entry, or at once when the gateway answers 204 (``past_end``). ``client``: an
    ``httpx.AsyncClient`` to use (yours to close); ``timeout`` per request (read: 60 s)."""
    return Follow(follow_state(base_url, job, gaps=gaps, **options), client, timeout)


@overload
def read(
    base_url: str | Sequence[str],
    job: str,
    *,
    gaps: Literal["raise"] = "raise",
    client: httpx.AsyncClient | None = None,
    timeout: httpx.Timeout | None = None,
    **options: Unpack[ReadOptions],
) -> Replay[LogEntry]: ...
@overload
def read(
    base_url: str | Sequence[str],
    job: str,
    *,
    gaps: Literal["yield"],
    client: httpx.AsyncClient | None = None,
    timeout: httpx.Timeout | None = None,
    **options: Unpack[ReadOptions],
) -> Replay[Item]: ...
def read(
    base_url: str | Sequence[str],
    job: str,
    *,
    gaps: Gaps = "raise",
    client: httpx.AsyncClient | None = None,
    timeout: httpx.Timeout | None = None,
    **options: Unpack[ReadOptions],
) -> Replay[Any]:
    """The job's stored entries, page after page of ``GET /v1/jobs/{job}/logs`` (each from the
    last ``next``). Options (:class:`~broker.client.state.ReadOptions`): ``after``, ``before``,
    ``order``, ``limit``, ``page_size``, filters, ``token``, ``retry``, ``on_retry``. A trimmed
    range surfaces as for :func:`follow`, where the hole is; an unknown job is :class:`NotFound`
    (``job_not_found``)."""
    return Replay(replay_state(base_url, job, gaps=gaps, **options), client, timeout)
