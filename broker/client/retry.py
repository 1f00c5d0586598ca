"""How long the client keeps trying, and how it paces its attempts (sans-IO: it only computes).

A failed attempt (no connection, a dropped stream, a 5xx) waits ``d·U(½, 1)`` with
``d = min(cap, base · 2^(n-1))`` for the n-th failure in a row: exponential, jittered so a fleet of
clients does not come back in lockstep. ``base`` is the gateway's ``retry:`` advice once it gave
one (docs/design.md §5), else ``Retry.initial_ms``; ``cap`` is ``Retry.max_ms`` (or the advice, if
larger). A ``Retry-After`` header is waited at least. A stream that opened resets the count.

Bounds: ``max_attempts`` failures in a row, or ``max_elapsed_s`` since they began (the start of
the first failed attempt, or the drop of a stream that had opened: a stream that ran for an hour
is not "an hour of failures"); either reached raises :class:`RetriesExhausted`, never a silent
give-up. A wait is never longer than what is left of ``max_elapsed_s``, so the last attempt is
made at the bound rather than after it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import InvalidConfig
from .errors import RetriesExhausted, ServerError


@dataclass(frozen=True, slots=True)
class Retry:
    initial_ms: int = 100
    max_ms: int = 5_000
    max_attempts: int | None = None  # failures in a row; None: bounded by time only
    max_elapsed_s: float | None = 300.0  # since the failures began; None: by attempts only

    def __post_init__(self) -> None:
        if not 1 <= self.initial_ms <= self.max_ms:
            raise InvalidConfig(
                f"Retry needs 1 <= initial_ms <= max_ms, got {self.initial_ms}, {self.max_ms}"
            )
        if self.max_attempts is not None and self.max_attempts < 1:
            raise InvalidConfig(f"Retry.max_attempts must be >= 1 or None, got {self.max_attempts}")
        if self.max_elapsed_s is not None and not self.max_elapsed_s >= 0:
            raise InvalidConfig(f"Retry.max_elapsed_s must be >= 0 or None, got {self.max_elapsed_s}")


class Backoff:
    """The pacing state of one follow or read: failures in a row and since when.

    ``attempt()`` before each request, then ``succeeded()`` (a stream opened, a page came) or
    ``failed()``."""

    def __init__(
        self,
        policy: Retry,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.policy = policy
        self.advice_ms: int | None = None  # the gateway's retry:
        self.failures = 0
        self._clock = clock
        self._rand = rand
        self._since: float | None = None  # when the current run of failures began

    def attempt(self) -> None:
        if self._since is None:
            self._since = self._clock()

    def succeeded(self) -> None:
        self.failures = 0
        self._since = None

    def failed(self, error: BaseException, url: str) -> float:
        """The wait before the next attempt, or :class:`RetriesExhausted` (from ``error``)."""
        self.failures += 1
        p = self.policy
        now = self._clock()
        if self._since is None:  # a stream that had opened dropped: the failures begin now
            self._since = now
        elapsed = now - self._since
        if (p.max_attempts is not None and self.failures >= p.max_attempts) or (
            p.max_elapsed_s is not None and elapsed >= p.max_elapsed_s
        ):
            raise RetriesExhausted(url, self.failures, elapsed, error) from error
        base = self.advice_ms if self.advice_ms is not None else p.initial_ms
        cap = max(p.max_ms, base)
        d = min(cap, base << min(self.failures - 1, 30))
        delay_s = d * (0.5 + 0.5 * self._rand()) / 1000
        if isinstance(error, ServerError) and error.retry_after_s is not None:
            delay_s = max(delay_s, error.retry_after_s)
        if p.max_elapsed_s is not None:
            delay_s = min(delay_s, p.max_elapsed_s - elapsed)
        return max(delay_s, 0.0)
