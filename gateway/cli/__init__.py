"""The ``logbroker`` command line: processes the app never imports (serve, demo, tail, token).

``main`` and ``freeze_startup_heap`` load on first use: ``gateway.cli.redis_server`` (the
embedded redis-server of tests and benchmarks) must not pull in aiohttp and the whole API with
it; a benchmark's publisher processes ran measurably slower with that heap to collect.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .command import main
    from .serve import freeze_startup_heap

__all__ = ["freeze_startup_heap", "main"]


def __getattr__(name: str) -> Any:
    if name == "main":
        from .command import main

        return main
    if name == "freeze_startup_heap":
        from .serve import freeze_startup_heap

        return freeze_startup_heap
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
