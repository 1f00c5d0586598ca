"""``job → step → worker`` handles: the identification travels with the handle, not the call.

A handle is generic in what a call returns, so one set of classes serves both publishers: with
:class:`~broker.Publisher` every call returns an awaitable, with :class:`~broker.SyncPublisher`
it returns ``None``.
"""

from __future__ import annotations

from typing import Any, Generic, Protocol, TypeVar

from .codec import LinePacker
from .entry import check_identity, check_job_id, check_name

R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


class Sink(Protocol[R_co]):
    def publish(
        self,
        job: str,
        msg: object = "",
        *,
        level: str | int = "info",
        kind: str = "log",
        step: str | None = None,
        worker: str | None = None,
        parent: str | None = None,
        status: str | None = None,
        fields: dict[str, Any] | None = None,
        job_name: str | None = None,
        job_type: str | None = None,
        ts_ms: int | None = None,
    ) -> R_co: ...

    def log_line(
        self, origin: _Scope[Any], level: str | int, msg: object, fields: dict[str, Any] | None
    ) -> R_co: ...

    def mask(self, value: str) -> None: ...


class _Scope(Generic[R]):
    __slots__ = ("_packer", "_sink", "job", "job_name", "job_type", "parent", "step_name", "worker_name")

    def __init__(
        self,
        sink: Sink[R],
        job: str,
        name: str | None,
        type: str | None,
        step: str | None = None,
        worker: str | None = None,
        parent: str | None = None,
    ) -> None:
        self._sink = sink
        self.job = check_job_id(job)
        self.job_name = check_name("job_name", name)
        self.job_type = check_name("job_type", type)
        self.step_name, self.worker_name, self.parent = check_identity(step, worker, parent)
        self._packer: LinePacker | None = None

    def log(self, level: str | int, msg: object, **fields: Any) -> R:
        return self._sink.log_line(self, level, msg, fields or None)

    def packer(self, src: str) -> LinePacker:
        """This handle's lines, packed for ``src`` (a forked child publishes under a new src)."""
        packer = self._packer
        if packer is None or packer.src != src:
            packer = self._packer = LinePacker(
                src, self.step_name, self.worker_name, self.parent, self.job_name, self.job_type
            )
        return packer

    def mask(self, value: str) -> None:
        """``::add-mask::``: ``value`` is masked in everything the publisher writes from now on
        (every job: a secret is one wherever it shows). Takes effect at once, in both publishers:
        nothing to await."""
        self._sink.mask(value)

    def debug(self, msg: object, **fields: Any) -> R:
        return self.log("debug", msg, **fields)

    def info(self, msg: object, **fields: Any) -> R:
        return self.log("info", msg, **fields)

    def warning(self, msg: object, **fields: Any) -> R:
        return self.log("warning", msg, **fields)

    def error(self, msg: object, **fields: Any) -> R:
        return self.log("error", msg, **fields)

    def critical(self, msg: object, **fields: Any) -> R:
        return self.log("critical", msg, **fields)

    def status(self, status: str, msg: str = "", **fields: Any) -> R:
        """Write the identifying status line: ``Status changed: <status> (job: ..., step: ...)``."""
        return self._sink.publish(
            self.job,
            msg,
            level="info",
            kind="status",
            status=status,
            step=self.step_name,
            worker=self.worker_name,
            parent=self.parent,
            fields=fields or None,
            job_name=self.job_name,
            job_type=self.job_type,
        )


class JobHandle(_Scope[R]):
    """The job a user watches; ``end()`` writes the end entry with the job's totals."""

    __slots__ = ()

    def step(self, name: str) -> StepHandle[R]:
        return StepHandle(self._sink, self.job, self.job_name, self.job_type, name)

    def end(self, status: str = "completed", msg: str = "", **fields: Any) -> R:
        return self._sink.publish(
            self.job,
            msg,
            level="info",
            kind="end",
            status=status,
            fields=fields or None,
            job_name=self.job_name,
            job_type=self.job_type,
        )


class StepHandle(_Scope[R]):
    __slots__ = ()

    def worker(self, name: str, parent: str | None = None) -> WorkerHandle[R]:
        return WorkerHandle(self._sink, self.job, self.job_name, self.job_type, self.step_name, name, parent)


class WorkerHandle(_Scope[R]):
    __slots__ = ()

    def child(self, name: str) -> WorkerHandle[R]:
        """A nested worker of the same step whose ``parent`` is this worker."""
        return WorkerHandle(
            self._sink, self.job, self.job_name, self.job_type, self.step_name, name, self.worker_name
        )
