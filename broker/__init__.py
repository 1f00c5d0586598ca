"""logbroker's publisher library: identified job logs into Redis Streams, nothing lost.

Async::

    async with Publisher("redis://localhost:6379/0") as pub:
        job = pub.job("mgr-42", name="Test Job Generator", type="manager")
        worker = job.step("high_volume_generator").worker("w-17")
        await worker.status("running")
        await worker.info("processed item 12", item=12)
        await job.end("completed")

Threads and processes use :class:`SyncPublisher` the same way, without ``await``; existing
``logging`` code publishes through :class:`LogbrokerHandler`.
"""

from .codec import decode_entry
from .config import PublisherConfig
from .core import PublisherHealth
from .entry import Entry
from .errors import CodecError, InvalidConfig, InvalidEntry, LogbrokerError, PublisherClosed
from .handles import JobHandle, StepHandle, WorkerHandle
from .keys import Keyspace
from .logging_handler import JobLoggerAdapter, LogbrokerHandler, LogContext, bind
from .meta import JobMeta, StepMeta, WorkerMeta, parse_meta
from .outbox import DeliveryReport
from .publisher import Publisher
from .sync_publisher import SyncPublisher

# The one home of the version: pyproject.toml reads it from here (tool.setuptools.dynamic), so a
# checkout on PYTHONPATH and the wheel built from it agree without asking installed metadata.
__version__ = "0.2.0"

__all__ = [
    "CodecError",
    "DeliveryReport",
    "Entry",
    "InvalidConfig",
    "InvalidEntry",
    "JobHandle",
    "JobLoggerAdapter",
    "JobMeta",
    "Keyspace",
    "LogContext",
    "LogbrokerError",
    "LogbrokerHandler",
    "Publisher",
    "PublisherClosed",
    "PublisherConfig",
    "PublisherHealth",
    "StepHandle",
    "StepMeta",
    "SyncPublisher",
    "WorkerHandle",
    "WorkerMeta",
    "__version__",
    "bind",
    "decode_entry",
    "parse_meta",
]
