"""Publish from the standard ``logging`` module, with job/step/worker taken from context.

Existing code keeps calling ``log.info(...)``; who is logging comes from ``bind()`` (contextvars,
so it follows threads' and asyncio tasks' own context), from a :class:`JobLoggerAdapter`, or
from ``extra={"job": ..., "step": ..., "worker": ...}``.

No feedback loops (docs/design.md §10.6): records from logbroker's own loggers, from redis-py, or
emitted on a publisher's sender thread are never published, so no log call inside the pipeline
can produce an entry.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any

from .errors import InvalidEntry
from .sync_publisher import SyncPublisher

_IGNORED_LOGGERS = ("broker", "gateway", "redis", "asyncio")
_CONTEXT_KEYS = ("job", "step", "worker", "parent", "job_name", "job_type")


@dataclass(frozen=True, slots=True)
class LogContext:
    job: str | None = None
    step: str | None = None
    worker: str | None = None
    parent: str | None = None
    job_name: str | None = None
    job_type: str | None = None


_current: ContextVar[LogContext] = ContextVar("logbroker_context", default=LogContext())  # noqa: B039 - frozen


@contextmanager
def bind(**names: str | None) -> Iterator[LogContext]:
    """Set job/step/worker (and parent, job_name, job_type) for log calls in this block.

    Nested binds refine the outer one: ``bind(job="j")`` then ``bind(step="s", worker="w")``.
    """
    unknown = set(names) - set(_CONTEXT_KEYS)
    if unknown:
        raise TypeError(f"bind() got unknown names: {', '.join(sorted(unknown))}")
    ctx = replace(_current.get(), **{k: v for k, v in names.items() if v is not None})
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)


class JobLoggerAdapter(logging.LoggerAdapter[logging.Logger]):
    """``JobLoggerAdapter(log, {"job": "j", "step": "s", "worker": "w"}).info("...")``: the
    names are the adapter's ``extra`` mapping, a positional dict as for any
    ``logging.LoggerAdapter`` (``JobLoggerAdapter(log, job="j")`` is a ``TypeError``). Unlike the
    standard adapter, which drops a call's own ``extra=``, it merges that over the names, so
    ``extra={"fields": {...}}`` and a per-call ``worker`` still arrive."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


class LogbrokerHandler(logging.Handler):
    """A ``logging.Handler`` that publishes through a :class:`SyncPublisher` (non-blocking unless
    its buffer is full, so it is fine in asyncio code too). ``job`` is the fallback job id."""

    def __init__(
        self, publisher: SyncPublisher, *, job: str | None = None, level: int = logging.NOTSET
    ) -> None:
        super().__init__(level)
        self.publisher = publisher
        self.default = LogContext(job=job)

    def emit(self, record: logging.LogRecord) -> None:
        """Never raises into the code that logged: a record that cannot be published (no job
        bound, a name the broker refuses, a closed publisher) goes to ``handleError``, which
        reports it on stderr as ``logging`` does for any handler, and is not stored."""
        if _ignored(record.name) or threading.current_thread().name.startswith("logbroker-"):
            return
        try:
            self._publish(record)
        except Exception:
            self.handleError(record)

    def _publish(self, record: logging.LogRecord) -> None:
        ctx = _current.get()
        names = {
            k: getattr(record, k, None) or getattr(ctx, k) or getattr(self.default, k) for k in _CONTEXT_KEYS
        }
        job = names.pop("job")
        if job is None:
            raise InvalidEntry("job", "no job bound: use bind(job=...), a JobLoggerAdapter, extra= or job=")
        fields = getattr(record, "fields", None)
        fields = dict(fields) if isinstance(fields, dict) else {}
        fields["logger"] = record.name
        self.publisher.publish(
            job,
            self.format(record),
            level=record.levelno,
            fields=fields,
            ts_ms=int(record.created * 1000),
            **names,
        )


def _ignored(name: str) -> bool:
    """logbroker's own loggers and its libraries', by whole name parts: ``redis`` and
    ``redis.connection`` are ignored, an application's ``redis_cache`` or ``brokerage`` is not."""
    return any(name == prefix or name.startswith(prefix + ".") for prefix in _IGNORED_LOGGERS)
