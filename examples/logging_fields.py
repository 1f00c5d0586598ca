"""Publishing through the logging module: python examples/logging_fields.py [REDIS_URL]"""

import logging
import sys

from broker import JobLoggerAdapter, LogbrokerHandler, SyncPublisher, bind

URL = sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:6379/0"
pub = SyncPublisher(URL)
logging.getLogger().addHandler(LogbrokerHandler(pub, job="etl-1"))  # the job when none is named
logging.getLogger().setLevel(logging.INFO)
log = logging.getLogger("etl")

log.info("starting")  # job etl-1, no step
log.info("loaded %d rows", 120, extra={"step": "load", "worker": "w-1", "fields": {"rows": 120}})
step = JobLoggerAdapter(log, {"step": "transform", "worker": "w-2"})  # the names are its extra mapping
step.warning("skipped a row", extra={"fields": {"row": 17}})  # a call's extra= adds to the adapter's
with bind(step="export", worker="w-3"):  # contextvars: follows threads and asyncio tasks
    log.error("upload failed", extra={"fields": {"attempt": 3}})
pub.job("etl-1").end("failed")
report = pub.close()
print(f"stored {report.delivered} entries, ok: {report.ok}")
