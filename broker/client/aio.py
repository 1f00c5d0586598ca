"""The asyncio transports: ``follow`` and ``read`` over one ``httpx.AsyncClient``.

Thin loops: the requests, what answers and events mean, the cursor and the waits all come from
``state`` (shared with the thread transports in ``sync``); this module only sends, reads and
sleeps. The iterator owns the client it made (closed with it) and never closes one it was given.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from types import TracebackType
from typing import Self

import httpx
from httpx_sse import EventSource

from .entries import LogEntry
from .errors import ServerError, StreamEnded
from .responses import ERROR_BODY_BYTES
from .retry import Retry
from .state import FollowState, Gaps, Item, Kind, ReplayState, RetryHook, follow_state, replay_state

# read: 4 heartbeats (docs/design.md §5, 15 s): a half-open connection is found and resumed
DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=60.0, write=10.0, pool=10.0)
RETRYABLE = (httpx.TransportError, ServerError, StreamEnded)


class _Source:
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

    async def __anext__(self) -> Item:
        if self._closed:
            raise StopAsyncIteration
        if self._items is None:
            self._items = self._run(self._http())
        try:
            return await anext(self._items)
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


class Follow(_Source):
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


class Replay(_Source):
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


def follow(
    base_url: str | Sequence[str],
    job: str,
    *,
    after: str | None = None,
    tail: int | None = None,
    step: str | None = None,
    worker: str | None = None,
    level: str | None = None,
    kind: Kind | None = None,
    token: str | None = None,
    gaps: Gaps = "raise",
    retry: Retry | None = None,
    on_retry: RetryHook | None = None,
    client: httpx.AsyncClient | None = None,
    timeout: httpx.Timeout | None = None,
) -> Follow:
    """Follow a job's stream to its end entry (yielded last), resuming through any failure.

    Start (docs/design.md §5): ``after`` (a stream id; ``"$"``: only entries written from now),
    else ``tail=N`` (the N newest matching, then live), else the beginning. ``step``, ``worker``,
    ``level`` (minimum) and ``kind`` (one or several) filter. ``gaps="yield"`` yields
    :class:`Gap`/:class:`Reset` markers instead of raising :class:`GapError`/:class:`ResetError`.
    Several base URLs are tried in turn after failures. Iteration ends after the end entry, or at
    once when the gateway answers 204 (``past_end``)."""
    state = follow_state(base_url, job, after=after, tail=tail, step=step, worker=worker, level=level,
                         kind=kind, token=token, gaps=gaps, retry=retry, on_retry=on_retry)  # fmt: skip
    return Follow(state, client, timeout)


def read(
    base_url: str | Sequence[str],
    job: str,
    *,
    after: str | None = None,
    before: str | None = None,
    step: str | None = None,
    worker: str | None = None,
    level: str | None = None,
    kind: Kind | None = None,
    order: str = "asc",
    limit: int | None = None,
    page_size: int = 1000,
    token: str | None = None,
    gaps: Gaps = "raise",
    retry: Retry | None = None,
    on_retry: RetryHook | None = None,
    client: httpx.AsyncClient | None = None,
    timeout: httpx.Timeout | None = None,
) -> Replay:
    """The job's stored entries between ``after`` and ``before`` (both exclusive), in ``order``,
    at most ``limit`` of them, fetched ``page_size`` at a time (at most the gateway's
    ``LOGBROKER_REPLAY_MAX_LIMIT``) by following each page's ``next``. A trimmed range surfaces
    as for :func:`follow`; an unknown job is :class:`NotFound` (``job_not_found``)."""
    state = replay_state(base_url, job, after=after, before=before, step=step, worker=worker,
                         level=level, kind=kind, order=order, limit=limit, page_size=page_size,
                         token=token, gaps=gaps, retry=retry, on_retry=on_retry)  # fmt: skip
    return Replay(state, client, timeout)
