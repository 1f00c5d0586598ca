"""``logbroker demo``: embedded Redis, a gateway, and the job-generator fleet in worker processes.

It prints where to watch first, follows the job with ``broker.client`` like any other consumer, and
ends with a delivery report: published, stored, delivered to the follower, lost (must be 0).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass, field

from aiohttp import web

from broker import Publisher
from broker.client import LogEntry, follow

from ..api import create_app
from ..api.auth import mint_token
from ..settings import GatewaySettings
from .serve import gateway_runner, redis_for
from .workload import StepSpec, expected_entries, run_step


@dataclass
class FollowerReport:
    delivered: int = 0
    duplicates: int = 0
    line_errors: int = 0
    connections: int = 0
    ended: bool = False
    lines: dict[str | None, int] = field(default_factory=lambda: defaultdict(int))


async def follow_job(base_url: str, job: str, report: FollowerReport, token: str | None = None) -> None:
    """Read the job's stream to its end entry with ``broker.client`` (which resumes by cursor
    after any failure); what arrives is counted and checked, not trusted."""
    seen: set[str] = set()
    async with follow(base_url, job, token=token) as entries:
        async for entry in entries:
            _count(report, seen, entry)
        report.connections = entries.connections
        report.ended = entries.end is not None


def _count(report: FollowerReport, seen: set[str], entry: LogEntry) -> None:
    if entry.id in seen:
        report.duplicates += 1
        return
    seen.add(entry.id)
    report.delivered += 1
    report.lines[entry.step] += 1
    if entry.line != report.lines[entry.step]:
        report.line_errors += 1


async def run_demo(settings: GatewaySettings, steps: list[StepSpec], processes: int) -> int:
    with redis_for(settings) as url:
        runner = gateway_runner(create_app(settings, redis_url=url), settings)
        await runner.setup()
        try:
            await web.TCPSite(runner, settings.host, settings.port).start()
            return await _run(settings, url or "", steps, processes)
        finally:
            await runner.cleanup()


async def _run(settings: GatewaySettings, url: str, steps: list[StepSpec], processes: int) -> int:
    base = f"http://{settings.host}:{settings.port}"
    job = f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    print(f"logbroker demo: watch job {job} at {base}/ (or: logbroker tail {job} --url {base})", flush=True)
    report = FollowerReport()
    secret = settings.auth_secret.get_secret_value() if settings.auth_secret else None
    token = mint_token(secret, jobs=job, scopes=["read"], ttl_s=86400) if secret else None
    follower = asyncio.create_task(follow_job(base, job, report, token))
    published, not_stored = await _publish(url, job, steps, processes)
    await asyncio.wait_for(follower, 120)
    return _report(job, steps, published, not_stored, report)


async def _publish(url: str, job: str, steps: list[StepSpec], processes: int) -> tuple[int, int]:
    name = "Test Job Generator"
    published = not_stored = 0
    async with Publisher(url) as pub:
        manager = pub.job(job, name=name, type="manager")
        await manager.status("running")
        for step in steps:
            await manager.step(step.name).status("running")
            assert (await pub.flush()).ok
            started = time.monotonic()
            stored, lost = await asyncio.to_thread(run_step, url, job, name, step, processes)
            published, not_stored = published + stored, not_stored + lost
            await manager.step(step.name).status("completed")
            took = time.monotonic() - started
            print(f"  {step.name}: {len(step.workers)} workers, {stored} entries, {took:.1f}s", flush=True)
        await manager.end("completed")
        final = await pub.aclose()
    return published + final.delivered + final.duplicates, not_stored + final.pending + final.rejected


def _report(job: str, steps: list[StepSpec], published: int, not_stored: int, f: FollowerReport) -> int:
    expected = expected_entries(steps) + 2 * len(steps) + 2
    lost = published - f.delivered
    print(f"delivery report for {job}:")
    print(f"  expected {expected}, published {published}, not stored {not_stored}")
    print(
        f"  delivered to the follower {f.delivered} ({f.connections} connections), duplicates {f.duplicates}"
    )
    contiguous = "yes" if f.line_errors == 0 else f"NO ({f.line_errors} errors)"
    print(f"  per-step line numbers contiguous: {contiguous}")
    print(f"  lost = {lost}", flush=True)
    ok = lost == 0 and published == expected and not_stored == 0 and f.duplicates == 0 and f.line_errors == 0
    return 0 if ok else 1
