"""``logbroker demo``: embedded Redis, a gateway, and the job-generator fleet in worker processes.

It prints where to watch first, follows the job with a built-in SSE client like any other, and
ends with a delivery report: published, stored, delivered to the follower, lost (must be 0).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from broker import Publisher
from broker.delivery import Backoff

from ..api import create_app
from ..api.auth import mint_token
from ..settings import GatewaySettings
from .serve import gateway_runner, redis_for
from .sse_parser import SSEParser
from .workload import StepSpec, expected_entries, run_step


@dataclass
class FollowerReport:
    delivered: int = 0
    duplicates: int = 0
    line_errors: int = 0
    connections: int = 0
    ended: bool = False
    lines: dict[str | None, int] = field(default_factory=lambda: defaultdict(int))


async def follow(base_url: str, job: str, report: FollowerReport, token: str | None = None) -> None:
    """Read the job's stream to its end event, resuming by Last-Event-ID after any error."""
    seen: set[str] = set()
    last_id = ""
    backoff = Backoff(100, 2000)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=60)) as http:
        while not report.ended:
            report.connections += 1
            try:
                headers = {"Last-Event-ID": last_id} if last_id else {}
                if token:
                    headers["Authorization"] = f"Bearer {token}"
                async with http.get(f"{base_url}/v1/jobs/{job}/stream", headers=headers) as resp:
                    parser = SSEParser()
                    async for chunk in resp.content.iter_any():
                        for message in parser.feed(chunk):
                            _count(report, seen, json.loads(message.data))
                            report.ended = report.ended or message.event == "end"
                        last_id = parser.last_id or last_id
            except (aiohttp.ClientError, TimeoutError, ConnectionError):
                await asyncio.sleep(backoff.next_delay_s())


def _count(report: FollowerReport, seen: set[str], entry: dict[str, object]) -> None:
    if entry["id"] in seen:
        report.duplicates += 1
        return
    seen.add(str(entry["id"]))
    report.delivered += 1
    step = entry["step"] if isinstance(entry["step"], str) else None
    report.lines[step] += 1
    if entry["line"] != report.lines[step]:
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
    follower = asyncio.create_task(follow(base, job, report, token))
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
