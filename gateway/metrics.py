"""Prometheus metrics of one gateway (a registry per app, so tests and apps never share counters)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.clients = Gauge("logbroker_sse_clients", "Open SSE streams", registry=r)
        self.entries_sent = Counter(
            "logbroker_sse_entries_sent_total", "Entries written to SSE clients", registry=r
        )
        self.bytes_sent = Counter(
            "logbroker_sse_bytes_sent_total", "Bytes written to SSE clients", registry=r
        )
        self.client_lag = Histogram(
            "logbroker_sse_client_lag_seconds",
            "Age of the newest entry in each write to a live client (stored -> written); clients reading"
            " history or with no entry yet are not sampled",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=r,
        )
        self.pages = Counter(
            "logbroker_sse_pages_total", "Pages read from Redis for clients behind the ring", registry=r
        )
        self.page_hits = Counter(
            "logbroker_sse_page_hits_total",
            "Pages for clients behind the ring served from one another lagging client had read",
            registry=r,
        )
        self.reaped = Counter(
            "logbroker_sse_reaped_total", "Clients closed because a write timed out", registry=r
        )
        self.resets = Counter(
            "logbroker_sse_resets_total",
            "Reset events sent: a client's cursor named entries the store no longer has (data lost)",
            registry=r,
        )
        self.dropped = Counter(
            "logbroker_dropped_entries_total",
            "Entries dropped by the gateway: must stay 0 (never a full buffer)",
            registry=r,
        )
        self.entries_read = Counter(
            "logbroker_entries_read_total", "Entries read by partition readers", registry=r
        )
        self.redis_read_seconds = Histogram(
            "logbroker_redis_read_seconds",
            "Duration of partition readers' XREAD calls (includes blocking)",
            registry=r,
        )
        self.ingest_entries = Counter(
            "logbroker_ingest_entries_total", "Entries posted to the ingest route", ["result"], registry=r
        )
        self.ingest_requests = Counter(
            "logbroker_ingest_requests_total", "Ingest requests by HTTP status", ["status"], registry=r
        )
        self.otlp_requests = Counter(
            "logbroker_otlp_requests_total", "OTLP log export requests by HTTP status", ["status"], registry=r
        )
        self.ring_entries = Gauge("logbroker_ring_entries", "Entries held in all job rings", registry=r)
        self.ring_bytes = Gauge("logbroker_ring_bytes", "Bytes held in all job rings", registry=r)
        self.unsent_bytes = Gauge(
            "logbroker_sse_unsent_bytes",
            "Bytes written to SSE clients that their sockets have not taken yet (held by the gateway)",
            registry=r,
        )
        self.pushes = Counter(
            "logbroker_sse_pushes_total",
            "Writes a ring made directly to caught-up clients (shared bytes, no task wake-up)",
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
