"""Publishing a test job: one function, :func:`publish_job`, writes any sequence of :class:`Line`
through a real :class:`~broker.SyncPublisher`; the builders below make the shapes tests use.

Tests check exactly what these write (messages, steps, workers, levels, fields, order), so a
builder's output is part of their contract: add a builder rather than change one.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from broker import SyncPublisher


@dataclass(frozen=True)
class Line:
    """One entry of a test job: a log line or, with ``status``, a status change, of the job
    (``step`` None), of a step (``worker`` None) or of a worker."""

    msg: str = ""
    step: str | None = None
    worker: str | None = None
    level: str = "info"
    fields: Mapping[str, Any] | None = None
    status: str | None = None


def publish_job(
    url: str,
    job: str,
    lines: Iterable[Line],
    *,
    name: str | None = None,
    type_: str | None = None,
    end: str | None = "completed",
    end_named: bool = True,
    pace_s: float = 0.0,
    pace_every: int = 1,
) -> None:
    """Write ``lines`` to ``job`` (named ``name``, of type ``type_``) in order, then the end entry
    with status ``end`` (none if None), flushed before returning.

    ``pace_s``: sleep that long after line ``i`` when ``i % pace_every == 0`` (a job that runs
    for a while). ``end_named=False``: the end entry comes from a handle without the job's name
    and type, as a process that only ends a job writes it."""
    with SyncPublisher(url) as pub:
        handle = pub.job(job, name=name, type=type_)
        scopes: dict[tuple[str | None, str | None], Any] = {(None, None): handle}
        for i, line in enumerate(lines):
            key = (line.step, line.worker)
            if key not in scopes:  # one handle per step and worker, as a real reporter keeps them
                assert line.step is not None, "a worker line needs its step"
                if (line.step, None) not in scopes:
                    scopes[(line.step, None)] = handle.step(line.step)
                if line.worker is not None:
                    scopes[key] = scopes[(line.step, None)].worker(line.worker)
            scope = scopes[key]
            if line.status is not None:
                scope.status(line.status)
            else:
                scope.log(line.level, line.msg, **(line.fields or {}))
            if pace_s and i % pace_every == 0:
                time.sleep(pace_s)
        if end:
            (handle if end_named else pub.job(job)).end(end)


# --- the shapes --------------------------------------------------------------------------------

STEP_LEVELS = ("info", "info", "warning", "error", "debug")


def step_lines(steps: Mapping[str, tuple[int, int]]) -> Iterator[Line]:
    """A job that reports like a manager: ``steps`` is step -> (workers, entries per worker).
    One job-level line first; each step and worker reports ``running`` then ``completed``; worker
    ``w<k>``'s entry ``i`` is ``"<step> w<k> <i>"`` with field ``i``, at level
    ``STEP_LEVELS[i % 5]`` (info, info, warning, error, debug)."""
    yield Line("job started")
    for step, (workers, per_worker) in steps.items():
        yield Line(step=step, status="running")
        for w in range(workers):
            worker = f"w{w}"
            yield Line(step=step, worker=worker, status="running")
            for i in range(per_worker):
                level = STEP_LEVELS[i % len(STEP_LEVELS)]
                yield Line(f"{step} {worker} {i}", step, worker, level, {"i": i})
            yield Line(step=step, worker=worker, status="completed")
        yield Line(step=step, status="completed")


def entry_lines(n: int, *, workers: int = 3, warn_every: int = 0) -> Iterator[Line]:
    """``n`` entries ``"entry <i>"`` with field ``i``, from worker ``w<i % workers>`` of step
    ``s``; at level warning when ``warn_every`` divides ``i``, else info."""
    for i in range(n):
        level = "warning" if warn_every and i % warn_every == 0 else "info"
        yield Line(f"entry {i}", "s", f"w{i % workers}", level, {"i": i})


# --- the callers' shapes, by name ----------------------------------------------------------------


def publish_steps(
    url: str,
    job: str,
    steps: Mapping[str, tuple[int, int]],
    *,
    name: str = "API",
    type_: str = "manager",
    end: str | None = "completed",
) -> None:
    """:func:`step_lines` published (the API tests' job)."""
    publish_job(url, job, step_lines(steps), name=name, type_=type_, end=end)


def publish_entries(url: str, job: str, n: int, *, end: bool = True) -> None:
    """``n`` entries over 3 workers, every 5th a warning, in a job named ``SSE`` (the stream
    tests' job)."""
    publish_job(
        url, job, entry_lines(n, warn_every=5), name="SSE", type_="manager", end="completed" if end else None
    )


def publish_paced(url: str, job: str, n: int, pace_s: float, name: str = "Paced") -> None:
    """``n`` entries over 5 workers, sleeping ``pace_s`` every 50, then the end entry (written by
    a handle without the name)."""
    publish_job(url, job, entry_lines(n, workers=5), name=name, end_named=False, pace_s=pace_s, pace_every=50)
