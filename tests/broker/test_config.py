"""PublisherConfig validation and the Redis key layout (broker/config.py, broker/keys.py)."""

from __future__ import annotations

import dataclasses
import math
import zlib
from typing import Any

import pytest
from redis.crc import key_slot

from broker.config import PublisherConfig
from broker.constants import (
    DEFAULT_ENDED_TTL_S,
    DEFAULT_IDLE_TTL_S,
    DEFAULT_KEY_PREFIX,
    DEFAULT_PARTITIONS,
    DEFAULT_STREAM_MAXLEN,
    OVERFLOW_POLICIES,
)
from broker.errors import InvalidConfig, InvalidEntry
from broker.keys import Keyspace
from broker.script import Retention

POSITIVE_INT_OPTIONS = ["max_batch_entries", "max_batch_bytes", "max_buffer_entries", "max_buffer_bytes"]
NON_NEGATIVE_INT_OPTIONS = ["linger_ms", "stream_maxlen", "idle_ttl_s", "ended_ttl_s"]
TIMEOUT_OPTIONS = ["socket_timeout_s", "connect_timeout_s"]


def test_defaults_are_accepted() -> None:
    config = PublisherConfig()
    assert config.overflow == "block"
    assert config.key_prefix == DEFAULT_KEY_PREFIX
    assert config.partitions == DEFAULT_PARTITIONS
    assert config.keyspace == Keyspace(DEFAULT_KEY_PREFIX, DEFAULT_PARTITIONS)
    assert config.retention == Retention(DEFAULT_STREAM_MAXLEN, DEFAULT_IDLE_TTL_S, DEFAULT_ENDED_TTL_S)


def test_config_is_immutable() -> None:
    config = PublisherConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.linger_ms = 5  # type: ignore[misc]


@pytest.mark.parametrize("name", POSITIVE_INT_OPTIONS)
@pytest.mark.parametrize("value", [0, -1, True, False, 1.0, 10.5, "10", None])
def test_positive_int_options_refuse_bad_values(name: str, value: object) -> None:
    with pytest.raises(InvalidConfig, match=name):
        PublisherConfig(**{name: value})


@pytest.mark.parametrize("name", POSITIVE_INT_OPTIONS)
def test_positive_int_options_accept_one(name: str) -> None:
    assert getattr(PublisherConfig(**{name: 1}), name) == 1


@pytest.mark.parametrize("name", NON_NEGATIVE_INT_OPTIONS)
@pytest.mark.parametrize("value", [-1, -1000, True, False, 1.0, 0.5, "10", None])
def test_non_negative_int_options_refuse_bad_values(name: str, value: object) -> None:
    with pytest.raises(InvalidConfig, match=name):
        PublisherConfig(**{name: value})


@pytest.mark.parametrize("name", NON_NEGATIVE_INT_OPTIONS)
@pytest.mark.parametrize("value", [0, 1, 10**9])
def test_non_negative_int_options_accept_zero_and_more(name: str, value: int) -> None:
    assert getattr(PublisherConfig(**{name: value}), name) == value


@pytest.mark.parametrize("value", [0, -1, 255, True, 1000.0, "65536", None])
def test_max_message_bytes_must_be_an_int_of_at_least_256(value: object) -> None:
    with pytest.raises(InvalidConfig, match="max_message_bytes"):
        PublisherConfig(max_message_bytes=value)  # type: ignore[arg-type]


def test_max_message_bytes_256_is_accepted() -> None:
    assert PublisherConfig(max_message_bytes=256).max_message_bytes == 256


@pytest.mark.parametrize("value", ["drop", "BLOCK", "", "drop-new", None, 1])
def test_unknown_overflow_policy_is_refused(value: object) -> None:
    with pytest.raises(InvalidConfig, match="overflow"):
        PublisherConfig(overflow=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("policy", OVERFLOW_POLICIES)
def test_known_overflow_policies_are_accepted(policy: str) -> None:
    assert PublisherConfig(overflow=policy).overflow == policy


@pytest.mark.parametrize("name", TIMEOUT_OPTIONS)
@pytest.mark.parametrize("value", [0, 0.0, -1, -0.5, True, math.nan, "10", None])
def test_timeouts_must_be_positive_numbers(name: str, value: object) -> None:
    with pytest.raises(InvalidConfig, match=name):
        PublisherConfig(**{name: value})


@pytest.mark.parametrize("name", TIMEOUT_OPTIONS)
@pytest.mark.parametrize("value", [0.001, 1, 2.5])
def test_timeouts_accept_positive_numbers(name: str, value: float) -> None:
    assert getattr(PublisherConfig(**{name: value}), name) == value


@pytest.mark.parametrize("value", [0, -1, 16385, 10**6])
def test_partitions_out_of_range_are_refused(value: int) -> None:
    with pytest.raises(InvalidConfig, match="partitions"):
        PublisherConfig(partitions=value)


@pytest.mark.parametrize(
    "value",
    [
        True,
        4.0,
        2.5,
        "16",
        None,
    ],
)
def test_partitions_must_be_an_int(value: object) -> None:
    with pytest.raises(InvalidConfig, match="partitions"):
        PublisherConfig(partitions=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [1, 16, 16384])
def test_partitions_in_range_are_accepted(value: int) -> None:
    assert PublisherConfig(partitions=value).keyspace.partitions == value


@pytest.mark.parametrize("prefix", ["", "a{b", "{x}", "a}b", "a b", "a\nb", "a\tb"])
def test_bad_key_prefix_is_refused(prefix: str) -> None:
    with pytest.raises(InvalidConfig, match="prefix"):
        PublisherConfig(key_prefix=prefix)
    with pytest.raises(InvalidConfig):
        Keyspace(prefix)


@pytest.mark.parametrize("prefix", ["logbroker", "my-app:logs", "x"])
def test_good_key_prefix_is_accepted(prefix: str) -> None:
    assert PublisherConfig(key_prefix=prefix).keyspace.prefix == prefix


def test_every_invalid_option_fails_at_construction_not_later() -> None:
    good: dict[str, Any] = {"max_batch_entries": 10, "linger_ms": 5, "overflow": "drop_new"}
    PublisherConfig(**good)
    with pytest.raises(InvalidConfig):
        PublisherConfig(**{**good, "max_batch_entries": 0})


# ---- keyspace -------------------------------------------------------------------------------

JOBS = ["mgr-42", "a", "job.1:x_y-z", "x" * 128, "0", "Z"]


@pytest.mark.parametrize("partitions", [1, 7, 16, 16384])
@pytest.mark.parametrize("job", JOBS)
def test_job_keys_share_one_hash_tag(job: str, partitions: int) -> None:
    ks = Keyspace("logbroker", partitions)
    p = zlib.crc32(job.encode()) % partitions
    assert ks.partition(job) == p
    stream, meta, index, seqs = ks.job_keys(job)
    assert stream == f"logbroker:{{p{p}}}:job:{job}:log"
    assert seqs == f"logbroker:{{p{p}}}:job:{job}:seqs"
    assert meta == f"logbroker:{{p{p}}}:job:{job}:meta"
    assert index == f"logbroker:{{p{p}}}:jobs" == ks.index(p)
    assert ks.stream(job) == stream
    assert ks.meta(job) == meta
    # One Redis Cluster slot for all four keys.
    assert len({key_slot(k.encode()) for k in (stream, meta, index, seqs)}) == 1


def test_jobs_spread_over_partitions() -> None:
    ks = Keyspace("logbroker", 16)
    partitions = {ks.partition(f"job-{i}") for i in range(500)}
    assert partitions == set(range(16))


def test_prefix_is_used_in_every_key() -> None:
    ks = PublisherConfig(key_prefix="other", partitions=4).keyspace
    for key in ks.job_keys("mgr-42"):
        assert key.startswith("other:{p")


@pytest.mark.parametrize("job", ["", "a b", "a{b}", "x" * 129, "a\n", "jöb", "a/b", None, 7])
def test_invalid_job_id_never_becomes_a_key(job: object) -> None:
    ks = Keyspace()
    for method in (ks.job_keys, ks.stream, ks.meta):
        with pytest.raises(InvalidEntry) as info:
            method(job)  # type: ignore[arg-type]
        assert info.value.field == "job"


@pytest.mark.parametrize(
    "options",
    [
        {"sentinels": ("no-port",), "sentinel_master": "m"},
        {"sentinels": ("h:0",), "sentinel_master": "m"},
        {"sentinels": ("h:26379",)},
        {"sentinel_master": "m"},
        {"sentinels": ("h:26379",), "sentinel_master": "m", "cluster": True},
        {"replica_ack_timeout_ms": 0},
        {"replica_acks": -1},
    ],
)
def test_topology_options_are_checked(options: dict[str, object]) -> None:
    with pytest.raises(InvalidConfig):
        PublisherConfig(**options)  # type: ignore[arg-type]


def test_sentinel_addresses_parse_host_and_port() -> None:
    from broker.config import sentinel_addresses

    assert sentinel_addresses(["127.0.0.1:26379", "::1:26380"]) == [("127.0.0.1", 26379), ("::1", 26380)]
