"""``logbroker tail JOB``: follow a job from a terminal, through drops and gateway restarts.

The cursor is the last event id; every reconnect sends it as ``Last-Event-ID``, so a line is
never printed twice and none is skipped. With ``--cursor-file`` the cursor also survives this
process. Exit status: 0 when the job completed, 1 when it ended otherwise, 2 on a usage error
(the gateway refused the request, or the URL is not http(s)), 3 when a filter matched no entry of
the ended job, 4 when the gateway could not be reached for ``retry_for_s``, 141 when standard
output was closed (``logbroker tail JOB | head``), quietly, like a tool ended by SIGPIPE.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

import aiohttp

from broker.delivery import Backoff

from ..errors import GatewayRefused
from .sse_parser import Message, SSEParser

_COLORS = {
    "debug": "\x1b[2m",
    "info": "",
    "warning": "\x1b[33m",
    "error": "\x1b[31m",
    "critical": "\x1b[1;31m",
}
_RESET = "\x1b[0m"
SUCCESS = frozenset({"completed", "succeeded", "success", "ok", "done"})
EXIT_NOTHING_MATCHED = 3
EXIT_UNREACHABLE = 4
EXIT_OUTPUT_CLOSED = 141  # 128 + SIGPIPE, as a shell reports a tool that wrote into a closed pipe


@dataclass
class TailOptions:
    base_url: str
    job: str
    after: str | None = None
    tail: int | None = None
    step: str | None = None
    worker: str | None = None
    level: str | None = None
    as_json: bool = False
    cursor_file: Path | None = None
    color: bool = False
    token: str | None = None  # sent as a Bearer token when the gateways require auth
    retry_for_s: float = 120.0  # give up when no connection succeeded for this long


def format_line(entry: dict[str, Any], color: bool) -> str:
    where = "/".join(p for p in (entry.get("step"), entry.get("worker")) if p) or "-"
    ts = str(entry.get("ts", ""))[11:23]
    level = str(entry.get("level", "info"))
    text = f"{ts} {level.upper():8} {where} #{entry.get('line')} {entry.get('msg', '')}"
    start = _COLORS.get(level, "") if color else ""
    return f"{start}{text}{_RESET}" if start else text


class Tail:
    def __init__(self, options: TailOptions, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> None:
        self.o = options
        self.out = out
        self.err = err
        self.cursor = options.after or self._load_cursor()
        self.final_status: str | None = None
        self.matched = 0  # entries shown, the end entry aside
        self.resumed_past_end = False  # the cursor was already past the end: what matched was shown before
        self._said_waiting = False

    def _load_cursor(self) -> str:
        f = self.o.cursor_file
        return f.read_text().strip() if f is not None and f.exists() else ""

    def _save_cursor(self) -> None:
        if self.o.cursor_file is not None and self.cursor:
            tmp = self.o.cursor_file.with_suffix(".tmp")
            tmp.write_text(self.cursor)
            os.replace(tmp, self.o.cursor_file)

    def _params(self) -> dict[str, str]:
        params = {
            k: v for k, v in (("step", self.o.step), ("worker", self.o.worker), ("level", self.o.level)) if v
        }
        if not self.cursor and self.o.tail is not None:
            params["tail"] = str(self.o.tail)
        return params

    async def run(self) -> int:
        if not self.o.base_url.startswith(("http://", "https://")):
            print(
                f"logbroker tail: --url must start with http:// or https://, got {self.o.base_url!r}",
                file=self.err,
            )
            return 2
        try:
            return await self._follow()
        except BrokenPipeError:  # our reader went away: nothing to say, and no one to say it to
            os.dup2(os.open(os.devnull, os.O_WRONLY), self.out.fileno())  # no error at exit
            return EXIT_OUTPUT_CLOSED

    async def _follow(self) -> int:
        backoff = Backoff(100, 3000)
        loop = asyncio.get_running_loop()
        reached = loop.time()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=120)) as http:
            while self.final_status is None:
                try:
                    await self._connect(http)
                    backoff.reset()
                    reached = loop.time()
                except GatewayRefused as e:
                    print(f"logbroker tail: {e}", file=self.err)
                    return 2
                except BrokenPipeError:
                    raise
                except (aiohttp.ClientError, TimeoutError, ConnectionError) as e:
                    if isinstance(e, aiohttp.ClientResponseError | aiohttp.ClientPayloadError):
                        reached = loop.time()  # the gateway answered: it is there, just failing
                    if loop.time() - reached > self.o.retry_for_s:
                        print(
                            f"logbroker tail: cannot reach {self.o.base_url} ({type(e).__name__}: {e}); "
                            f"gave up after {self.o.retry_for_s:.0f}s",
                            file=self.err,
                        )
                        return EXIT_UNREACHABLE
                    delay = backoff.next_delay_s()
                    print(
                        f"logbroker tail: connection lost ({type(e).__name__}), resuming in {delay:.1f}s",
                        file=self.err,
                    )
                    await asyncio.sleep(delay)
        self._save_cursor()
        filtered = bool(self.o.step or self.o.worker or self.o.level)
        if filtered and self.matched == 0 and not self.resumed_past_end:
            print(f"logbroker tail: no entry of job {self.o.job} matched the filters", file=self.err)
            return EXIT_NOTHING_MATCHED
        return 0 if self.final_status in SUCCESS else 1

    async def _connect(self, http: aiohttp.ClientSession) -> None:
        headers = {"Last-Event-ID": self.cursor} if self.cursor else {}
        if self.o.token:
            headers["Authorization"] = f"Bearer {self.o.token}"
        url = f"{self.o.base_url}/v1/jobs/{quote(self.o.job, safe='')}/stream"
        async with http.get(url, params=self._params(), headers=headers) as resp:
            if resp.status == 204:  # we are past the end already
                self.final_status = await self._job_status(http) or "unknown"
                self.resumed_past_end = True
                return
            if 400 <= resp.status < 500:
                raise GatewayRefused(f"{resp.status}: {(await resp.text())[:300]}")
            resp.raise_for_status()
            await self._say_if_waiting(http)
            parser = SSEParser()
            async for chunk in resp.content.iter_any():
                for message in parser.feed(chunk):
                    self._show(message)
                self.cursor = parser.last_id or self.cursor
                self._save_cursor()
                if self.final_status is not None:
                    return
            raise ConnectionResetError("stream ended before the job did")

    def _show(self, message: Message) -> None:
        if message.event == "gap":
            gap = json.loads(message.data)
            print(f"logbroker tail: entries before {gap['first_available']} were trimmed", file=self.err)
            return
        entry = json.loads(message.data)
        print(
            json.dumps(entry) if self.o.as_json else format_line(entry, self.o.color),
            file=self.out,
            flush=True,
        )
        if message.event == "end":
            self.final_status = entry.get("status") or "unknown"
        else:
            self.matched += 1

    async def _say_if_waiting(self, http: aiohttp.ClientSession) -> None:
        """Once: a job that does not exist yet is waited for, and the user is told so."""
        if self._said_waiting or self.cursor:
            return
        self._said_waiting = True
        if await self._job_status(http) is None:
            print(f"logbroker tail: job {self.o.job} does not exist yet; waiting for it", file=self.err)

    async def _job_status(self, http: aiohttp.ClientSession) -> str | None:
        """The job's status (``"unknown"`` when it has none or cannot be read); ``None``: no such job."""
        headers = {"Authorization": f"Bearer {self.o.token}"} if self.o.token else {}
        async with http.get(
            f"{self.o.base_url}/v1/jobs/{quote(self.o.job, safe='')}", headers=headers
        ) as resp:
            if resp.status == 404:
                return None
            if resp.status != 200:
                return "unknown"
            return str((await resp.json()).get("status") or "unknown")
