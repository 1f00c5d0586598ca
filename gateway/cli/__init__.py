"""The ``logbroker`` command line: processes the app never imports (serve, demo, tail, token)."""

from .main import main
from .serve import freeze_startup_heap

__all__ = ["freeze_startup_heap", "main"]
