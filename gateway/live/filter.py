"""Which entries a client wants: one rule for the SSE stream and for replay (docs/design.md §5)."""

from __future__ import annotations

from dataclasses import dataclass

from broker.constants import KIND_END

from .items import KIND, KIND_CORRUPT, LEVEL, STEP, WORKER, Item


@dataclass(frozen=True, slots=True)
class Filter:
    """``step``, ``worker``, a minimum level and a set of kinds; the end entry always passes (it
    ends the stream, and carries the totals that prove a filtered download complete)."""

    step: str | None = None
    worker: str | None = None
    min_level: int = 0
    kinds: frozenset[int] | None = None

    @property
    def active(self) -> bool:
        return self != _NO_FILTER

    def passes(self, item: Item) -> bool:
        if item[KIND] == KIND_END:
            return True
        if item[KIND] == KIND_CORRUPT:
            return False
        return (
            (self.step is None or item[STEP] == self.step)
            and (self.worker is None or item[WORKER] == self.worker)
            and item[LEVEL] >= self.min_level
            and (self.kinds is None or item[KIND] in self.kinds)
        )


_NO_FILTER = Filter()
