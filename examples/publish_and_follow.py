"""A worker publishes a job's logs; a client follows them over SSE: python examples/publish_and_follow.py"""

import asyncio
import tempfile

from aiohttp import web

from broker import Publisher
from broker.client import follow
from gateway.api import create_app
from gateway.cli.redis_server import RedisServer
from gateway.settings import GatewaySettings


async def worker(redis_url: str) -> None:
    async with Publisher(redis_url) as pub:
        job = pub.job("demo-1", name="Quick start", type="manager")
        w = job.step("build").worker("w-1")
        await w.status("running")
        for i in range(3):
            await w.info(f"compiled module {i}", module=i)
        await w.status("completed")
        await job.end("completed")


async def watch(base: str) -> None:
    async with follow(base, "demo-1") as entries:  # resumes after drops; the end entry comes last
        async for e in entries:
            print(f"{e.line:>3} {e.step or '-':8} {e.worker or '-':5} {e.level:7} {e.msg}")


async def main() -> None:
    redis = RedisServer(tempfile.mkdtemp(), appendonly=False).start()  # what `logbroker serve` embeds
    runner = web.AppRunner(create_app(GatewaySettings(redis_url=redis.url)))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    base = "http://{}:{}".format(*runner.addresses[0])
    try:
        await asyncio.gather(watch(base), worker(redis.url))
    finally:
        await runner.cleanup()
        redis.stop()


asyncio.run(main())
