"""What secret masking costs: publish throughput without masking and with 5 mask values, A/B in one run.

Why this exists: masking runs on the hot path (``Outbox.offer_line``), and its goal is to cost at
most 15% of publish throughput with 5 patterns (issue 17). The variants run interleaved, round
after round against the same server, and each variant's median round is reported, so a noisy
neighbour on a shared machine hits every variant alike.

Variants (the async publisher, one process, ``benchmarks/publish.py``'s workload: 200-character
lines round-robin over 8 worker handles of one job):

* ``none``: no ``mask=`` (the path that must stay as fast as before);
* ``mask5``: ``mask=[5 values]``, none of which occurs in the lines (the usual case);
* ``mask5_hits``: the same 5 values, one line in 100 contains one (so is masked and counted).

It also measures the gateway side without HTTP: ``gateway.api.ingest.prepare`` (parse, validate,
mask, pack) of a 512-entry JSON body, with masking off, the built-in patterns (the default), and
the built-ins plus 5 operator patterns (``LOGBROKER_MASK_PATTERNS``, which run on every text).

Usage (from the repository root)::

    .venv/bin/python benchmarks/mask.py            # about a minute
    .venv/bin/python benchmarks/mask.py --smoke    # seconds; what the test suite runs

One JSON object goes to stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import secrets
import statistics
import sys
import time
from typing import Any, cast

import redis
from harness import MESSAGE_BYTES, log, machine, message
from publish import _workers, redis_url

from broker import JobHandle, Keyspace, Publisher, PublisherConfig
from broker.masking import Masker
from broker.outbox import Outbox
from gateway.api.ingest import prepare
from gateway.metrics import Metrics
from gateway.settings import GatewaySettings

GOAL_MAX_COST = 0.15
MASK_VALUES = 5
HIT_EVERY = 100
DEFAULT_ENTRIES, DEFAULT_ROUNDS = 200_000, 5
SMOKE_ENTRIES, SMOKE_ROUNDS = 2_000, 1
INGEST_BATCH = 512  # entries per request, as the OpenTelemetry SDK batches
OPERATOR_PATTERNS = (r"corp-\d{6}", r"(?i:password)=\S+", r"sk_live_\w{24}", r"xapp-\d-\w+", r"AIza[\w-]{35}")


async def _publish(url: str, job: str, n: int, mask: list[str], hits: bool) -> tuple[float, int]:
    """Entries/s from the first publish to the flush that delivered the last, and the meta's count."""
    lines = [message(i) for i in range(n)]
    if hits:
        for i in range(0, n, HIT_EVERY):
            lines[i] = f"{mask[i % len(mask)]} {lines[i]}"[:MESSAGE_BYTES]
    async with Publisher(url, mask=mask) as pub:
        workers = _workers(pub, job)
        count = len(workers)
        start = time.monotonic()
        for i, line in enumerate(lines):
            await workers[i % count].info(line)
        report = await pub.flush()
        elapsed = time.monotonic() - start
    if report.delivered != n:
        raise RuntimeError(f"{job}: delivered {report.delivered} of {n}")
    return n / elapsed, 0


def _check_and_drop(client: redis.Redis, job: str, n: int, expect_masked: int) -> bool:
    stream, meta, index, seqs = Keyspace().job_keys(job)
    stored, masked = int(client.xlen(stream)), int(client.hget(meta, "masked") or 0)
    ok = stored == n and masked == expect_masked
    if not ok:
        log(f"WRONG: {job} holds {stored} of {n} entries, {masked} masked (expected {expect_masked})")
    client.delete(stream, meta, seqs, *client.keys(f"{seqs}:*"))
    client.zrem(index, job)
    return ok


def publish_ab(url: str, client: redis.Redis, entries: int, rounds: int) -> tuple[dict[str, float], bool]:
    """Median entries/s of each variant over ``rounds`` interleaved rounds."""
    values = [f"mask-value-{secrets.token_hex(8)}" for _ in range(MASK_VALUES)]
    variants: dict[str, tuple[list[str], bool, int]] = {
        "none": ([], False, 0),
        "mask5": (values, False, 0),
        "mask5_hits": (values, True, len(range(0, entries, HIT_EVERY))),
    }
    rates: dict[str, list[float]] = {name: [] for name in variants}
    ok = True
    names = list(variants)
    for r in range(rounds):
        for name in names[r % 3 :] + names[: r % 3]:  # each variant goes first in some round
            mask, hits, expect = variants[name]
            job = f"bench-mask-{name}-{r}-{secrets.token_hex(2)}"
            rate, _ = asyncio.run(_publish(url, job, entries, mask, hits))
            ok = _check_and_drop(client, job, entries, expect) and ok
            rates[name].append(rate)
            log(f"round {r + 1}/{rounds} {name}: {rate:,.0f} entries/s")
    return {name: statistics.median(v) for name, v in rates.items()}, ok


def offer_line_ab(entries: int, rounds: int) -> dict[str, float]:
    """Microseconds of CPU per ``Outbox.offer_line`` (no Redis, no sender): the producer's own
    cost, which is what masking adds to; CPU time and the best round, as the machine is shared."""
    values = [f"mask-value-{secrets.token_hex(8)}" for _ in range(MASK_VALUES)]
    lines = [message(i) for i in range(entries)]
    hit_lines = [f"{values[i % MASK_VALUES]} {line}"[:MESSAGE_BYTES] if i % HIT_EVERY == 0 else line
                 for i, line in enumerate(lines)]  # fmt: skip
    worker = JobHandle(cast(Any, None), "bench", "n", "t").step("s").worker("w")
    config = PublisherConfig(max_buffer_entries=entries + 1, max_buffer_bytes=2**40)
    variants = {"none": (None, lines), "mask5": (values, lines), "mask5_hits": (values, hit_lines)}
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, (mask, texts) in variants.items():
            box = Outbox(config, "bench:1", Masker(mask) if mask else None)
            start = time.process_time()
            for text in texts:
                box.offer_line(worker, 20, text, None)
            us = (time.process_time() - start) / entries * 1e6
            best[name] = min(us, best.get(name, us))
    log("offer_line: " + ", ".join(f"{k} {v:.2f} us" for k, v in best.items()))
    return best


def ingest_ab(entries: int, rounds: int) -> dict[str, float]:
    """Entries/s of ``prepare`` (no Redis, no HTTP) on 512-entry bodies: masking off, built-ins, +5."""
    body = json.dumps(
        [
            {"msg": message(i), "step": "s", "worker": "w", "fields": {"i": i, "host": "h-1"}}
            for i in range(INGEST_BATCH)
        ]
    ).encode()
    variants = {
        "none": GatewaySettings(mask_builtin=False),
        "builtin": GatewaySettings(),
        "builtin_plus5": GatewaySettings(mask_patterns=OPERATOR_PATTERNS),
    }
    metrics = Metrics()
    requests = max(1, entries // INGEST_BATCH)
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, settings in variants.items():
            start = time.perf_counter()
            for _ in range(requests):
                prepare(settings, metrics, "bench-ingest", body, ndjson=False)
            rates[name].append(requests * INGEST_BATCH / (time.perf_counter() - start))
    result = {name: statistics.median(v) for name, v in rates.items()}
    log("ingest prepare: " + ", ".join(f"{k} {v:,.0f}/s" for k, v in result.items()))
    return result


def cost(rate: float, base: float) -> float:
    return round(1 - rate / base, 3)


def summarize(
    host: dict[str, Any], entries: int, rounds: int, pub: dict[str, float], offer: dict[str, float],
    ingest: dict[str, float], verified: bool,
) -> dict[str, Any]:  # fmt: skip
    """The JSON contract (see benchmarks/README.md)."""
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": host,
        "entries_per_round": entries,
        "rounds": rounds,
        "message_bytes": MESSAGE_BYTES,
        "mask_values": MASK_VALUES,
        "publish_eps": {k: round(v) for k, v in pub.items()},
        "publish_cost": {k: cost(v, pub["none"]) for k, v in pub.items() if k != "none"},
        "offer_line_cpu_us": {k: round(v, 3) for k, v in offer.items()},
        "offer_line_cost": {k: round(v / offer["none"] - 1, 3) for k, v in offer.items() if k != "none"},
        "ingest_prepare_eps": {k: round(v) for k, v in ingest.items()},
        "ingest_prepare_cost": {k: cost(v, ingest["none"]) for k, v in ingest.items() if k != "none"},
        "goals": {"mask5_cost<=15%": cost(pub["mask5"], pub["none"]) <= GOAL_MAX_COST},
        "verified": verified,
    }


def main(argv: list[str] | None = None) -> int:
    """Exit status 1 when an entry was lost or a masked count was wrong."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--entries", type=int, default=DEFAULT_ENTRIES, help="entries per variant and round")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="interleaved rounds (median)")
    parser.add_argument("--smoke", action="store_true", help="tiny run for tests")
    parser.add_argument("--redis-url", help="measure this Redis instead of starting a private redis-server")
    args = parser.parse_args(argv)
    if args.entries < 1 or args.rounds < 1:
        parser.error("--entries and --rounds must be >= 1")
    entries, rounds = (SMOKE_ENTRIES, SMOKE_ROUNDS) if args.smoke else (args.entries, args.rounds)
    with redis_url(args.redis_url) as url:
        client = redis.Redis.from_url(url)
        try:
            pub, verified = publish_ab(url, client, entries, rounds)
            host = machine("cpus", "cpu_model", "python", redis_client=client)
        finally:
            client.close()
    offer = offer_line_ab(entries, rounds)
    ingest = ingest_ab(entries, rounds)
    print(json.dumps(summarize(host, entries, rounds, pub, offer, ingest, verified), indent=2))
    return 0 if verified else 1


if __name__ == "__main__":
    sys.exit(main())
