"""``logbroker tail JOB``: follow a job from a terminal, through drops and gateway restarts.

The following itself is ``broker.client.follow``: it resumes from its cursor after every failure,
so a line is never printed twice and none is skipped; this module prints, keeps ``--cursor-file``
(the cursor survives this process too) and turns outcomes into exit statuses: 0 when the job
completed, 1 when it ended otherwise, 2 on a usage error (the gateway refused the request, or the
URL is not http(s)), 3 when a filter matched no entry of the ended job, 4 when the gateway could
not be reached for ``retry_for_s``, 141 when standard output was closed (``logbroker tail JOB |
head``), quietly, like a tool ended by SIGPIPE.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO
from urllib.parse import quote

import httpx

from broker.client import (
    ClientError,
    Follow,
    Gap,
    LogEntry,
    Reset,
    RetriesExhausted,
    Retry,
    ServerError,
    follow,
)
from broker.client.state import Item

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
    retry_for_s: float = 120.0  # give up when the gateway failed for this long


def format_line(entry: LogEntry, color: bool) -> str:
    where = "/".join(p for p in (entry.step, entry.worker) if p) or "-"
    text = f"{entry.ts[11:23]} {entry.level.upper():8} {where} #{entry.line} {entry.msg}"
    start = _COLORS.get(entry.level, "") if color else ""
    return f"{start}{text}{_RESET}" if start else text


class Tail:
    def __init__(self, options: TailOptions, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> None:
        self.o = options
        self.out = out
        self.err = err
        self.cursor = options.after or self._load_cursor()
        self.final_status: str | None = None
        self.matched = 0  # entries shown, the end entry aside

    def _load_cursor(self) -> str:
        f = self.o.cursor_file
        return f.read_text().strip() if f is not None and f.exists() else ""

    def _save_cursor(self) -> None:
        if self.o.cursor_file is not None and self.cursor:
            tmp = self.o.cursor_file.with_suffix(".tmp")
            tmp.write_text(self.cursor)
            os.replace(tmp, self.o.cursor_file)

    def _say(self, text: str) -> None:
        print(f"logbroker tail: {text}", file=self.err)

    async def run(self) -> int:
        if not self.o.base_url.startswith(("http://", "https://")):
            self._say(f"--url must start with http:// or https://, got {self.o.base_url!r}")
            return 2
        try:
            return await self._follow()
        except BrokenPipeError:  # our reader went away: nothing to say, and no one to say it to
            os.dup2(os.open(os.devnull, os.O_WRONLY), self.out.fileno())  # no error at exit
            return EXIT_OUTPUT_CLOSED

    async def _follow(self) -> int:
        o = self.o
        async with httpx.AsyncClient() as http:
            if not self.cursor:
                await self._say_if_waiting(http)
            entries = follow(
                o.base_url, o.job, after=self.cursor or None, tail=o.tail, step=o.step, worker=o.worker,
                level=o.level, token=o.token, gaps="yield", client=http, on_retry=self._retrying,
                retry=Retry(initial_ms=100, max_ms=3000, max_elapsed_s=o.retry_for_s),
            )  # fmt: skip
            try:
                async with entries:
                    await self._show_all(entries)
            except RetriesExhausted as e:
                last = e.last_error
                self._say(f"cannot reach {o.base_url} ({type(last).__name__}: {last}); "
                          f"gave up after {o.retry_for_s:.0f}s")  # fmt: skip
                return EXIT_UNREACHABLE
            except ClientError as e:
                self._say(str(e))
                return 2
            finally:
                self.cursor = entries.cursor or self.cursor  # "$" pinned, id-only events counted
                self._save_cursor()
            if entries.past_end:  # the cursor was past the end already: what matched was shown before
                try:
                    self.final_status = await self._job_status(http) or "unknown"
                except httpx.HTTPError as e:
                    self._say(f"the job has ended, its status could not be read ({type(e).__name__})")
                return 0 if self.final_status in SUCCESS else 1
        if (o.step or o.worker or o.level) and self.matched == 0:
            self._say(f"no entry of job {o.job} matched the filters")
            return EXIT_NOTHING_MATCHED
        return 0 if self.final_status in SUCCESS else 1

    async def _show_all(self, entries: Follow[Item]) -> None:
        async for item in entries:
            if isinstance(item, Gap):
                self._say(f"entries before {item.first_available} were trimmed")
            elif isinstance(item, Reset):
                self._say(f"the job's data was lost ({item.reason}); following it from its new beginning")
            else:
                self._show(item)
            self.cursor = entries.cursor
            self._save_cursor()

    def _show(self, entry: LogEntry) -> None:
        text = json.dumps(entry.to_dict()) if self.o.as_json else format_line(entry, self.o.color)
        print(text, file=self.out, flush=True)
        if entry.kind == "end":
            self.final_status = entry.status or "unknown"
        else:
            self.matched += 1

    def _retrying(self, error: BaseException, delay_s: float) -> None:
        what = f"the gateway answered {error}" if isinstance(error, ServerError) else (
            f"connection lost ({type(error).__name__})"
        )  # fmt: skip
        self._say(f"{what}, resuming in {delay_s:.1f}s")

    async def _say_if_waiting(self, http: httpx.AsyncClient) -> None:
        """A job that does not exist yet is waited for, and the user is told so."""
        try:
            if await self._job_status(http) is None:
                self._say(f"job {self.o.job} does not exist yet; waiting for it")
        except httpx.HTTPError:
            pass  # the gateway is not there (yet): following it says so, and retries

    async def _job_status(self, http: httpx.AsyncClient) -> str | None:
        """The job's status (``"unknown"`` when it has none or cannot be read); ``None``: no such job."""
        headers = {"Authorization": f"Bearer {self.o.token}"} if self.o.token else {}
        resp = await http.get(f"{self.o.base_url}/v1/jobs/{quote(self.o.job, safe='')}", headers=headers)
        if resp.status_code == 404 and b"job_not_found" in resp.content:
            return None
        if resp.status_code != 200:
            return "unknown"
        return str(resp.json().get("status") or "unknown")
