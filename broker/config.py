"""Publisher options as one validated, immutable value (environment is read only by the CLI)."""

from __future__ import annotations

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
from .script import Retention


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
    socket_timeout_s: float = DEFAULT_SOCKET_TIMEOUT_S
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S

    def __post_init__(self) -> None:
        positive = ("max_batch_entries", "max_batch_bytes", "max_buffer_entries", "max_buffer_bytes")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidConfig(f"{name} must be a positive integer, got {value!r}")
        non_negative = ("linger_ms", "stream_maxlen", "idle_ttl_s", "ended_ttl_s")
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
        if self.src is not None:
            try:
                check_name("src", self.src)
            except InvalidEntry as e:
                raise InvalidConfig(str(e)) from e

    @property
    def keyspace(self) -> Keyspace:
        return Keyspace(self.key_prefix, self.partitions)

    @property
    def retention(self) -> Retention:
        return Retention(self.stream_maxlen, self.idle_ttl_s, self.ended_ttl_s)
