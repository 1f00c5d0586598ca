"""logbroker's consumer client: follow a job's stream, or read its stored pages, from Python.

Async::

    async with follow("http://127.0.0.1:8080", "mgr-42") as entries:
        async for e in entries:              # LogEntry; the job's end entry comes last
            print(e.line, e.step, e.level, e.msg)

Threads: ``with follow_sync(...) as entries: for e in entries: ...``. Replay: ``read`` /
``read_sync``. Both resume by cursor through dropped connections, gateway restarts and 5xx
(``Retry`` bounds how long), and never hide lost data: a trimmed range raises :class:`GapError`,
lost job data :class:`ResetError` (or, with ``gaps="yield"``, yield :class:`Gap`/:class:`Reset`).
The protocol is docs/design.md §5; this package needs the ``client`` extra (httpx, httpx-sse).
"""

try:
    import httpx  # noqa: F401
    import httpx_sse  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError("broker.client needs httpx and httpx-sse: pip install 'logbroker[client]'") from e

from .aio import Follow, Replay, follow, read
from .entries import Gap, LogEntry, Reset
from .errors import (
    BadRequest,
    ClientError,
    Forbidden,
    GapError,
    NotFound,
    ProtocolError,
    Refused,
    ResetError,
    RetriesExhausted,
    ServerError,
    Unauthorized,
)
from .retry import Retry
from .state import RetryHook
from .sync import FollowSync, ReplaySync, follow_sync, read_sync

__all__ = [
    "BadRequest",
    "ClientError",
    "Follow",
    "FollowSync",
    "Forbidden",
    "Gap",
    "GapError",
    "LogEntry",
    "NotFound",
    "ProtocolError",
    "Refused",
    "Replay",
    "ReplaySync",
    "Reset",
    "ResetError",
    "RetriesExhausted",
    "Retry",
    "RetryHook",
    "ServerError",
    "Unauthorized",
    "follow",
    "follow_sync",
    "read",
    "read_sync",
]
