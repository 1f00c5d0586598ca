"""Publisher options as one validated, immutable value (environment is read only by the CLI)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .constants import (
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_ENDED_TTL_S,
    DEFAULT_IDLE_TTL_S,
    DEFAULT_KEY_PREFIX,
    DEFAULT_LINGER_MS,
    DEFAULT_MAX_BATCH_BYTES,
    DEFAULT_MAX_BATCH_ENTRIES,
    DEFAULT_MAX_BUFFER_BYTES,
    DEFAULT_MAX_BUFFER_ENTRIES,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_PARTITIONS,
    DEFAULT_SOCKET_TIMEOUT_S,
    DEFAULT_STREAM_MAXLEN,
    OVERFLOW_BLOCK,
    OVERFLOW_POLICIES,
)
from .entry import check_name
from .errors import InvalidConfig, InvalidEntry
from .keys import Keyspace
from .script import Durability, Retention


def sentinel_addresses(sentinels: Iterable[object]) -> list[tuple[str, int]]:
    """``"host:port"`` strings as (host, port); the one parser for publishers and gateways."""
    out = []
    for address in sentinels:
        host, _, port = str(address).rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidConfig(f"a sentinel is host:port, got {address!r}")
        out.append((host, int(port)))
    return out


@dataclass(frozen=True, slots=True)
class PublisherConfig:
    """Everything a publisher can be told; out-of-range values fail here, at construction.

    ``overflow`` decides what a full buffer does: ``block`` (the caller waits, nothing is lost),
    ``drop_new`` (the new entry is dropped) or ``drop_oldest`` (the oldest unsent one is). Drops
    are counted and reported by a visible marker entry in the job, never silent.
    """

    src: str | None = None
    key_prefix: str = DEFAULT_KEY_PREFIX
    partitions: int = DEFAULT_PARTITIONS
    max_batch_entries: int = DEFAULT_MAX_BATCH_ENTRIES
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES
    linger_ms: int = DEFAULT_LINGER_MS
    max_buffer_entries: int = DEFAULT_MAX_BUFFER_ENTRIES
    max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES
    overflow: str = OVERFLOW_BLOCK
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    stream_maxlen: int = DEFAULT_STREAM_MAXLEN
    idle_ttl_s: int = DEFAULT_IDLE_TTL_S
    ended_ttl_s: int = DEFAULT_ENDED_TTL_S
    cluster: bool = False  # the URL names one node of a Redis Cluster
    sentinels: tuple[str, ...] = ()  # "host:port" of Sentinels; the URL is then not used
    sentinel_master: str | None = None
    replica_acks: int = 0  # > 0: a batch is delivered once this many replicas acknowledged it (WAIT)
    replica_ack_timeout_ms: int = 1000
    socket_timeout_s: float = DEFAULT_SOCKET_TIMEOUT_S
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S

    def __post_init__(self) -> None:
        positive = ("max_batch_entries", "max_batch_bytes", "max_buffer_entries", "max_buffer_bytes")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidConfig(f"{name} must be a positive integer, got {value!r}")
        non_negative = ("linger_ms", "stream_maxlen", "idle_ttl_s", "ended_ttl_s", "replica_acks")
        for name in non_negative:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidConfig(f"{name} must be an integer >= 0, got {value!r}")
        if not isinstance(self.max_message_bytes, int) or self.max_message_bytes < 256:
            raise InvalidConfig(
                f"max_message_bytes must be an integer >= 256, got {self.max_message_bytes!r}"
            )
        if self.overflow not in OVERFLOW_POLICIES:
            raise InvalidConfig(
                f"overflow must be one of {', '.join(OVERFLOW_POLICIES)}, got {self.overflow!r}"
            )
        for name in ("socket_timeout_s", "connect_timeout_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
                raise InvalidConfig(f"{name} must be a number > 0, got {value!r}")
        Keyspace(self.key_prefix, self.partitions)  # validates both
        self._check_topology()
        if self.src is not None:
            try:
                check_name("src", self.src)
            except InvalidEntry as e:
                raise InvalidConfig(str(e)) from e

    def _check_topology(self) -> None:
        timeout = self.replica_ack_timeout_ms
        if not isinstance(timeout, int) or isinstance(timeout, bool) or not 1 <= timeout <= 600_000:
            raise InvalidConfig(f"replica_ack_timeout_ms must be 1..600000, got {timeout!r}")
        if self.sentinels and self.cluster:
            raise InvalidConfig("use either sentinels or cluster, not both")
        if bool(self.sentinels) != bool(self.sentinel_master):
            raise InvalidConfig("sentinels and sentinel_master go together")
        sentinel_addresses(self.sentinels)

    @property
    def durability(self) -> Durability:
        return Durability(self.replica_acks, self.replica_ack_timeout_ms)

    @property
    def keyspace(self) -> Keyspace:
        return Keyspace(self.key_prefix, self.partitions)

    @property
    def retention(self) -> Retention:
        return Retention(self.stream_maxlen, self.idle_ttl_s, self.ended_ttl_s)
