"""Redis-side cost of the write script per entry, against plain pipelined XADD on the same server.

Why this exists: everything a publisher or ingest stores goes through one Lua script, and Redis runs
it on its single thread, so the script's cost per entry bounds what one Redis can take. This
measures it as redis-server's own CPU (``INFO cpu``), not wall time, so a busy client machine
changes little; the reference is ``XADD`` of the same bodies, pipelined, in the same run. With
``--against <git ref>`` the script of that commit runs too, interleaved round by round (A B B A
...), for a before/after ratio of a change to the script.

Usage (from the repository root)::

    .venv/bin/python benchmarks/write_script.py                    # about half a minute
    .venv/bin/python benchmarks/write_script.py --against HEAD~1   # and the previous script
    .venv/bin/python benchmarks/write_script.py --smoke            # seconds; what the suite runs

One JSON object goes to stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import tempfile
from datetime import UTC, datetime

import redis
from harness import ROOT, logger, machine, message, redis_cpu_s, sizes_from_args

from broker.codec import LinePacker
from broker.keys import Keyspace
from broker.script import WRITE_BATCH_LUA, Retention, write_args
from gateway.cli.redis_server import RedisServer

say = logger("write_script")
NO_RETENTION = Retention(0, 0, 0)


@dataclasses.dataclass(frozen=True)
class Sizes:
    entries: int = 60_000  # per round, per script, per batch size
    rounds: int = 6


SMOKE = Sizes(entries=2_000, rounds=2)
BATCHES = (1000, 1)


def _items(n: int, first_seq: int) -> list[bytes]:
    packer = LinePacker("bench:1:abcdef", "step", "w-1", None, None, None)
    ts = 1_764_000_000_000
    return [packer.pack(ts + i, 20, message(i), first_seq + i, None) for i in range(n)]


def _run_script(client: redis.Redis, sha: str, job: str, batch: int, n: int) -> float:
    """Redis CPU seconds to store ``n`` entries of one job in batches of ``batch``."""
    keys = Keyspace().job_keys(job)
    items = _items(n, 1)
    before = redis_cpu_s(client)
    pipe = client.pipeline(transaction=False)
    for at in range(0, n, batch):
        pipe.evalsha(sha, *write_args(job, keys, items[at : at + batch], NO_RETENTION, None, None))
        if len(pipe) >= 64:
            pipe.execute()
    pipe.execute()
    spent = redis_cpu_s(client) - before
    client.delete(keys[0], keys[1], keys[3])
    return spent


def _run_xadd(client: redis.Redis, job: str, n: int) -> float:
    """The reference: the same bodies with plain XADD, pipelined 1000 at a time."""
    key = Keyspace().stream(job)
    items = _items(n, 1)
    before = redis_cpu_s(client)
    pipe = client.pipeline(transaction=False)
    for i, item in enumerate(items):
        pipe.xadd(key, {"l": i + 1, "b": item})
        if len(pipe) >= 1000:
            pipe.execute()
    pipe.execute()
    spent = redis_cpu_s(client) - before
    client.delete(key)
    return spent


def _script_of(ref: str) -> str:
    command = ["git", "show", f"{ref}:broker/lua/write_batch.lua"]
    return subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True).stdout


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entries", type=int, help="entries per round, script and batch size")
    parser.add_argument("--rounds", type=int, help="interleaved rounds")
    parser.add_argument("--against", help="a git ref whose write script runs too, for a ratio")
    parser.add_argument("--smoke", action="store_true", help="tiny run for tests")
    args = parser.parse_args()
    sizes = sizes_from_args(args, Sizes(), SMOKE)
    with tempfile.TemporaryDirectory() as data:
        server = RedisServer(data, appendonly=False).start()
        try:
            client = redis.Redis.from_url(server.url)
            scripts = {"current": client.script_load(WRITE_BATCH_LUA)}
            if args.against:
                scripts["against"] = client.script_load(_script_of(args.against))
            result: dict[str, object] = {
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": machine("cpus", "cpu_model", "python", redis_client=client),
                "entries": sizes.entries,
                "rounds": sizes.rounds,
                "against": args.against,
            }
            for batch in BATCHES:
                cpu: dict[str, list[float]] = {name: [] for name in (*scripts, "xadd")}
                for r in range(sizes.rounds):
                    order = [*scripts] if r % 2 == 0 else [*reversed(scripts)]
                    for name in order:
                        job = f"bench-{name}-{batch}-{r}"
                        cpu[name].append(_run_script(client, scripts[name], job, batch, sizes.entries))
                    cpu["xadd"].append(_run_xadd(client, f"bench-xadd-{batch}-{r}", sizes.entries))
                    say(f"batch {batch} round {r + 1}/{sizes.rounds} done")
                us = {name: statistics.median(v) / sizes.entries * 1e6 for name, v in cpu.items()}
                part: dict[str, float] = {
                    "current_us_per_entry": round(us["current"], 3),
                    "xadd_us_per_entry": round(us["xadd"], 3),
                    "current_vs_xadd": round(us["current"] / us["xadd"], 3),
                }
                if "against" in scripts:
                    pairs = [c / a for c, a in zip(cpu["current"], cpu["against"], strict=True) if a > 0]
                    part["against_us_per_entry"] = round(us["against"], 3)
                    part["current_over_against"] = round(statistics.median(pairs), 3) if pairs else 0.0
                result[f"batch_{batch}"] = part
            client.close()
        finally:
            server.stop()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
