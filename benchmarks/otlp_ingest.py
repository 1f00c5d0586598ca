"""OTLP/HTTP logs ingest (``POST /v1/logs``, protobuf) vs. our JSON ingest and the Python publisher.

Why this exists: issue 17's goal is >= 50,000 entries/s of OTLP into one gateway process, in
batches of 512 records as the OpenTelemetry SDKs' BatchLogRecordProcessor sends them. The number
means something only next to the gateway's own JSON ingest (the same entries, the same gateway)
and the Python publisher (straight to Redis, no gateway), measured in the same run.

The request bodies are built before the clock starts (an SDK builds them in the worker, not in
the gateway); ``--connections`` requests are in flight at once, each on its own job, so the
gateway is never idle waiting for a client. Every part verifies that each job's stream holds
exactly the entries sent (``verified``).

Usage (from the repository root)::

    .venv/bin/python benchmarks/otlp_ingest.py            # 400 batches of 512 per part, ~30 s
    .venv/bin/python benchmarks/otlp_ingest.py --smoke    # seconds; what the test suite runs

One JSON object goes to stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import redis
from harness import log as say
from harness import machine, message, running_gateway, sizes_from_args
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from broker import Keyspace, Publisher
from gateway.cli.redis_server import RedisServer

GOAL_EPS = 50_000
FIELDS = {"code.file.path": "/app/worker.py", "code.function.name": "run", "code.line.number": 42}


@dataclass(frozen=True)
class Sizes:
    batches: int  # per part
    batch: int  # records (entries) per request
    connections: int  # requests in flight at once, one job each


DEFAULT = Sizes(batches=400, batch=512, connections=4)
SMOKE = Sizes(batches=4, batch=512, connections=2)


def _kv(key: str, value: str | int) -> KeyValue:
    any_value = AnyValue(int_value=value) if isinstance(value, int) else AnyValue(string_value=value)
    return KeyValue(key=key, value=any_value)


def otlp_body(job: str, first: int, n: int) -> bytes:
    """What an SDK's exporter sends: one resource (the CI/CD attributes), one scope, n records with
    the attributes Python's LoggingHandler adds (code location)."""
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    resource_logs.resource.attributes.extend(
        [
            _kv("cicd.pipeline.run.id", job),
            _kv("cicd.pipeline.name", "OTLP benchmark"),
            _kv("cicd.pipeline.task.name", "build"),
            _kv("cicd.worker.id", "w-1"),
            _kv("service.name", "bench-worker"),
        ]
    )
    scope = resource_logs.scope_logs.add()
    scope.scope.name = "bench"
    now = time.time_ns()
    for i in range(first, first + n):
        record = scope.log_records.add()
        record.time_unix_nano = now + i
        record.observed_time_unix_nano = now + i
        record.severity_number = 9
        record.severity_text = "INFO"
        record.body.string_value = message(i)
        record.attributes.extend(_kv(k, v) for k, v in FIELDS.items())
    return request.SerializeToString()


def json_body(job: str, first: int, n: int) -> bytes:
    """Our ingest JSON with the same content: step, worker, message, the same three fields."""
    entries = [
        {"msg": message(i), "step": "build", "worker": "w-1", "fields": FIELDS}
        for i in range(first, first + n)
    ]
    return json.dumps(entries).encode()


async def _post_all(url: str, bodies: list[tuple[str, bytes]], ctype: str, connections: int) -> float:
    """All bodies, ``connections`` at a time (each connection its own job, in order); the wall time."""
    lanes: list[list[tuple[str, bytes]]] = [bodies[i::connections] for i in range(connections)]

    async def lane(session: aiohttp.ClientSession, items: list[tuple[str, bytes]]) -> None:
        for path, body in items:
            async with session.post(url + path, data=body, headers={"Content-Type": ctype}) as resp:
                answer = await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"{path}: {resp.status} {answer[:300]!r}")
                if ctype == "application/x-protobuf" and answer:
                    raise RuntimeError(f"{path}: partial success {answer[:300]!r}")

    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        await lane(session, lanes[0][:1])  # warm: the connection, the script, the first job's keys
        start = time.perf_counter()
        await asyncio.gather(*(lane(session, items if i else items[1:]) for i, items in enumerate(lanes)))
        return time.perf_counter() - start


def _part(
    gw_url: str, gw_cpu: Callable[[], float], rc: redis.Redis, sizes: Sizes, name: str, ctype: str,
    build: Callable[[str, int, int], bytes], path: Callable[[str], str],
) -> dict[str, Any]:  # fmt: skip
    jobs = [f"{name}-{c}" for c in range(sizes.connections)]
    bodies = []
    for b in range(sizes.batches):
        job = jobs[b % sizes.connections]
        bodies.append((path(job), build(job, b * sizes.batch, sizes.batch)))
    average = sum(len(b) for _, b in bodies) / len(bodies)
    say(f"{name}: {len(bodies)} requests of {sizes.batch}, {average:.0f} B each")
    cpu0 = gw_cpu()
    wall = asyncio.run(_post_all(gw_url, bodies, ctype, sizes.connections))
    cpu = gw_cpu() - cpu0
    timed = (sizes.batches - 1) * sizes.batch  # the warm-up request is not timed
    stored = sum(rc.xlen(Keyspace().stream(job)) for job in jobs)
    result = {
        "entries_per_s": round(timed / wall),
        "wall_s": round(wall, 3),
        "gateway_cpu_s": round(cpu, 3),
        "entries_per_gateway_cpu_s": round(timed / cpu) if cpu > 0 else None,
        "request_bytes": round(sum(len(b) for _, b in bodies) / len(bodies)),
        "verified": stored == sizes.batches * sizes.batch,
    }
    say(f"{name}: {result}")
    return result


async def _publisher(url: str, sizes: Sizes) -> float:
    """The Python publisher (asyncio) writing the same entries straight to Redis."""
    total = sizes.batches * sizes.batch
    async with Publisher(url) as pub:
        worker = pub.job("publisher-0").step("build").worker("w-1")
        await worker.info("warm")
        await pub.flush()
        start = time.perf_counter()
        for i in range(total):
            await worker.info(message(i), **FIELDS)
        report = await pub.flush()
        wall = time.perf_counter() - start
    if report.pending:
        raise RuntimeError(f"publisher: {report.pending} entries still pending")
    return wall


def run(sizes: Sizes, tmp: Path) -> dict[str, Any]:
    server = RedisServer(tmp / "redis", appendonly=False).start()
    try:
        rc = redis.Redis.from_url(server.url)
        host = machine(redis_client=rc)
        with running_gateway(server.url, tmp, "otlp") as gw:
            otlp_path, ingest_path = (lambda job: "/v1/logs"), (lambda job: f"/v1/jobs/{job}/logs")
            otlp = _part(gw.url, gw.cpu_s, rc, sizes, "otlp", "application/x-protobuf", otlp_body, otlp_path)
            ingest = _part(gw.url, gw.cpu_s, rc, sizes, "json", "application/json", json_body, ingest_path)
        wall = asyncio.run(_publisher(server.url, sizes))
        total = sizes.batches * sizes.batch
        published = rc.xlen(Keyspace().stream("publisher-0"))
        verified = published == total + 1  # and the warm-up line
        publisher = {"entries_per_s": round(total / wall), "wall_s": round(wall, 3), "verified": verified}
        say(f"publisher: {publisher}")
        rc.close()
    finally:
        server.stop()
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": host,
        "sizes": asdict(sizes),
        "message_bytes": len(message(0)),
        "otlp_protobuf": otlp,
        "json_ingest": ingest,
        "python_publisher": publisher,
        "ratios": {
            "otlp_vs_json_ingest": round(otlp["entries_per_s"] / ingest["entries_per_s"], 3),
            "otlp_vs_python_publisher": round(otlp["entries_per_s"] / publisher["entries_per_s"], 3),
        },
        "goals": {f"otlp_eps>={GOAL_EPS}": otlp["entries_per_s"] >= GOAL_EPS},
        "verified": otlp["verified"] and ingest["verified"] and publisher["verified"],
    }


def main(argv: list[str] | None = None) -> int:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--smoke", action="store_true", help="tiny run for the test suite")
    parser.add_argument("--batches", type=int, help=f"requests per part (default {DEFAULT.batches})")
    parser.add_argument("--batch", type=int, help=f"records per request (default {DEFAULT.batch})")
    parser.add_argument("--connections", type=int, help=f"requests in flight (default {DEFAULT.connections})")
    sizes = sizes_from_args(parser.parse_args(argv), DEFAULT, SMOKE)
    with tempfile.TemporaryDirectory(prefix="otlp-bench-") as tmp:
        result = run(sizes, Path(tmp))
    print(json.dumps(result))
    return 0 if result["verified"] else 1


if __name__ == "__main__":
    sys.exit(main())
