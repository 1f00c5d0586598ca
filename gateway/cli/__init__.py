"""The ``logbroker`` command line: processes the app never imports (serve, demo, tail, token).

``main`` is the console script, installed with every install of the package; the commands need
the gateway extra, so it imports them (aiohttp, pydantic, ...) only when it runs, and without
that extra says in one line what to install instead of a traceback. ``freeze_startup_heap``
loads on first use too: ``gateway.cli.redis_server`` (the embedded redis-server of tests and
benchmarks) must not pull in aiohttp and the whole API with it; a benchmark's publisher
processes ran measurably slower with that heap to collect.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .serve import freeze_startup_heap

__all__ = ["freeze_startup_heap", "main"]

_INSTALL_GATEWAY = "pip install 'logbroker[gateway]'"


def main(argv: Sequence[str] | None = None) -> int:
    try:
        from .command import main as run
    except ModuleNotFoundError as e:
        missing = (e.name or "").partition(".")[0]
        if not missing or missing in ("broker", "gateway"):
            raise  # a broken install of the package itself, not a missing extra
        print(
            f"logbroker: the gateway extra is not installed (no module {missing!r}): {_INSTALL_GATEWAY}",
            file=sys.stderr,
        )
        return 1
    return run(argv)


def __getattr__(name: str) -> Any:
    if name == "freeze_startup_heap":
        from .serve import freeze_startup_heap

        return freeze_startup_heap
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
