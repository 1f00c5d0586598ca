"""Redis key names (docs/design.md §3): every key of a job shares the hash tag of its partition.

A job lives in partition ``crc32(job) % partitions``; its stream, its meta hash and the
partition's job index share the tag ``{p<n>}``, so one Lua call touches them all, in one
Redis Cluster slot, and a gateway needs one blocking reader per partition, not per job.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from .constants import DEFAULT_KEY_PREFIX, DEFAULT_PARTITIONS
from .entry import check_job_id
from .errors import InvalidConfig


@dataclass(frozen=True, slots=True)
class Keyspace:
    prefix: str = DEFAULT_KEY_PREFIX
    partitions: int = DEFAULT_PARTITIONS

    def __post_init__(self) -> None:
        if not isinstance(self.partitions, int) or isinstance(self.partitions, bool):
            raise InvalidConfig(f"partitions must be an integer, got {self.partitions!r}")
        if not 1 <= self.partitions <= 16384:
            raise InvalidConfig(f"partitions must be 1..16384, got {self.partitions}")
        if not isinstance(self.prefix, str) or not self.prefix or any(c in self.prefix for c in "{} \n\r\t"):
            raise InvalidConfig(f"key prefix must be non-empty without braces or spaces, got {self.prefix!r}")

    def partition(self, job: str) -> int:
        return zlib.crc32(job.encode()) % self.partitions

    def job_keys(self, job: str) -> tuple[str, str, str, str]:
        """(stream, meta, partition index, seqs) of a validated job id: the write script's keys."""
        check_job_id(job)
        tag = f"{self.prefix}:{{p{self.partition(job)}}}"
        return f"{tag}:job:{job}:log", f"{tag}:job:{job}:meta", f"{tag}:jobs", f"{tag}:job:{job}:seqs"

    def stream(self, job: str) -> str:
        return self.job_keys(job)[0]

    def meta(self, job: str) -> str:
        return self.job_keys(job)[1]

    def index(self, partition: int) -> str:
        """Jobs of one partition by last activity (a sorted set); the job list merges all partitions."""
        return f"{self.prefix}:{{p{partition}}}:jobs"
