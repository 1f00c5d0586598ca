"""Gateway settings: the one place the environment is read (``LOGBROKER_*``, docs/design.md §8)."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from broker.config import sentinel_addresses
from broker.constants import (
    DEFAULT_ENDED_TTL_S,
    DEFAULT_IDLE_TTL_S,
    DEFAULT_KEY_PREFIX,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_PARTITIONS,
    DEFAULT_STREAM_MAXLEN,
)
from broker.keys import Keyspace
from broker.masking import BUILTIN_PATTERNS, Masker, compile_pattern
from broker.script import Retention

MIN_SECRET_BYTES = 32  # RFC 7518 §3.2: an HS256 key is at least as long as the hash (256 bits)
ANY_ORIGIN = "*"
_ORIGIN_RE = re.compile(r"https?://[a-z0-9.\-\[\]:]+")  # scheme://host[:port], no path


def check_origin(value: str) -> str:
    """One CORS allow-list entry, normalised as browsers send it (lower case, no trailing slash)."""
    origin = value.strip().lower().rstrip("/")
    if origin != ANY_ORIGIN and _ORIGIN_RE.fullmatch(origin) is None:
        raise ValueError(f"a CORS origin is scheme://host[:port] (or *), got {value!r:.80}")
    return origin


class GatewaySettings(BaseSettings):
    """Every value is validated at start-up; a bad one stops the gateway with a clear message."""

    # hide_input_in_errors: a refused LOGBROKER_AUTH_SECRET (or a Redis URL password) is never echoed
    model_config = SettingsConfigDict(
        env_prefix="LOGBROKER_",
        extra="ignore",
        frozen=True,
        hide_input_in_errors=True,
        env_ignore_empty=True,  # `${VAR:-}` in a compose file means unset, not an empty value
    )

    redis_url: str | None = None  # unset: embedded redis-server (logbroker serve)
    redis_cluster: bool = False  # the URL names one node of a Redis Cluster
    sentinels: Annotated[tuple[str, ...], NoDecode] = ()  # host:port,... of Sentinels (then no URL)
    sentinel_master: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    # uvloop where installed (auto): its C transports make each write to a client cheaper
    event_loop: Literal["auto", "asyncio", "uvloop"] = "auto"
    auth_secret: SecretStr | None = None  # set: job-scoped JWT auth (gateway/auth.py)
    auth_leeway_s: float = Field(10.0, ge=0, le=300)  # clock skew allowed on a token's exp
    cors_origins: Annotated[tuple[str, ...], NoDecode] = ()  # comma-separated; empty: no CORS headers
    data_dir: Path = Path(".logbroker")
    key_prefix: str = DEFAULT_KEY_PREFIX
    partitions: int = Field(DEFAULT_PARTITIONS, ge=1, le=16384)
    # the shared Redis pools (one for reads, one for writes): a request waits this long for a
    # free connection when all are busy, then 503
    redis_max_connections: int = Field(256, ge=1, le=100_000)
    redis_pool_timeout_s: float = Field(5.0, gt=0, le=300)
    # a connection's wait for a request's headers (slowloris): 408 and closed after this long
    header_timeout_s: float = Field(10.0, gt=0, le=300)
    # SSE
    heartbeat_s: float = Field(15.0, gt=0, le=3600)
    retry_ms: int = Field(2000, ge=0, le=3_600_000)
    write_timeout_s: float = Field(30.0, gt=0)
    write_chunk_bytes: int = Field(64 * 1024, ge=1024)  # at most this much per write to one client
    # per write once a client's kernel send queue already holds write_chunk_bytes: what a client
    # that stopped reading makes the gateway hold
    write_buffer_bytes: int = Field(8 * 1024, ge=1024)
    max_clients: int = Field(10_000, ge=1)
    # fan-out memory bounds: per-job ring of recent frames, page size for lagging clients
    ring_entries: int = Field(10_000, ge=1)
    ring_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    page_entries: int = Field(500, ge=1, le=10_000)
    # ... and a page's bytes: it ends with the entry that reaches this much (gateway/live/budget.py)
    page_max_bytes: int = Field(1024 * 1024, ge=1024, le=1024 * 1024 * 1024)
    read_block_ms: int = Field(5000, ge=10, le=60_000)
    read_count: int = Field(1000, ge=1, le=100_000)
    # after a read that caught up, wait this long before the next: each wake-up of the readers
    # costs a write per client, so under a steady trickle fewer, larger writes (latency + this)
    read_linger_ms: float = Field(5.0, ge=0, le=1000)
    # replay and ingest
    replay_default_limit: int = Field(100, ge=1)
    replay_max_limit: int = Field(5000, ge=1)
    replay_max_bytes: int = Field(8 * 1024 * 1024, ge=64 * 1024)  # a JSON page stops past this much
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    max_ingest_entries: int = Field(10_000, ge=1)
    max_message_bytes: int = Field(DEFAULT_MAX_MESSAGE_BYTES, ge=256)
    # POST /v1/logs (OTLP): the attribute each entry key is read from (docs/design.md §5)
    otlp_job_attribute: str = Field("cicd.pipeline.run.id", min_length=1)
    otlp_job_name_attribute: str = Field("cicd.pipeline.name", min_length=1)
    otlp_step_attribute: str = Field("cicd.pipeline.task.name", min_length=1)
    otlp_worker_attribute: str = Field("cicd.worker.id", min_length=1)
    otlp_worker_fallback_attribute: str = Field("service.instance.id", min_length=1)
    # secret masking of what the gateway ingests (docs/design.md §2): a JSON array of regexes, and
    # whether the built-in credential formats (broker.masking.BUILTIN_PATTERNS) are masked too
    mask_patterns: Annotated[tuple[str, ...], NoDecode] = ()
    mask_builtin: bool = True
    # retention applied to what the gateway ingests (docs/design.md §3)
    stream_maxlen: int = Field(DEFAULT_STREAM_MAXLEN, ge=0)
    idle_ttl_s: int = Field(DEFAULT_IDLE_TTL_S, ge=0)
    ended_ttl_s: int = Field(DEFAULT_ENDED_TTL_S, ge=0)

    @field_validator("key_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        Keyspace(value, 1)
        return value

    @field_validator("auth_secret")
    @classmethod
    def _secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"LOGBROKER_AUTH_SECRET must be at least {MIN_SECRET_BYTES} bytes (HS256 key)")
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origins(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part for part in value.split(",") if part.strip()]
        if isinstance(value, list | tuple):
            return tuple(check_origin(str(origin)) for origin in value)
        return value

    @field_validator("mask_patterns", mode="before")
    @classmethod
    def _mask_patterns(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise ValueError(
                    'LOGBROKER_MASK_PATTERNS must be a JSON array of regexes, e.g. ["token=\\\\w+"]'
                ) from None
        if not isinstance(value, list | tuple) or not all(isinstance(p, str) for p in value):
            raise ValueError("LOGBROKER_MASK_PATTERNS must be a JSON array of strings (regexes)")
        for pattern in value:
            compile_pattern(pattern)  # InvalidConfig (a ValueError) names the bad pattern
        return tuple(value)

    @field_validator("sentinels", mode="before")
    @classmethod
    def _sentinels(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list | tuple):
            sentinel_addresses(value)  # InvalidConfig is a ValueError: pydantic reports it
            return tuple(str(a) for a in value)
        return value

    @model_validator(mode="after")
    def _topology(self) -> GatewaySettings:
        if bool(self.sentinels) != bool(self.sentinel_master):
            raise ValueError("sentinels (LOGBROKER_SENTINELS) and sentinel_master go together")
        if self.sentinels and self.redis_cluster:
            raise ValueError("use either Sentinels or a Redis Cluster, not both")
        return self

    @field_validator("redis_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value or None

    @property
    def uses_embedded_redis(self) -> bool:
        """No Redis configured (neither a URL nor Sentinels): ``serve`` and ``demo`` start one."""
        return self.redis_url is None and not self.sentinels

    @property
    def keyspace(self) -> Keyspace:
        return Keyspace(self.key_prefix, self.partitions)

    @property
    def retention(self) -> Retention:
        return Retention(self.stream_maxlen, self.idle_ttl_s, self.ended_ttl_s)

    @property
    def masker(self) -> Masker | None:
        """What ingest masks (``None``: nothing); built once per distinct setting."""
        return _masker(self.mask_patterns, self.mask_builtin)


@functools.lru_cache(maxsize=8)
def _masker(patterns: tuple[str, ...], builtin: bool) -> Masker | None:
    if not patterns and not builtin:
        return None
    return Masker(patterns=(*(BUILTIN_PATTERNS if builtin else ()), *patterns))
