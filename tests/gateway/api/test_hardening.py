"""What outside testing broke, route by route (each test failed on the code before its fix)."""

from __future__ import annotations

import asyncio
import json

from tests.support.fixture_types import Client
from tests.support.helpers import error_of


async def test_head_on_a_stream_is_refused_without_a_body_and_not_counted(api: Client) -> None:
    """A HEAD used to be served as the stream itself: headers, then a body that never ended."""
    resp = await asyncio.wait_for(api.head("/v1/jobs/h/stream"), 5)
    assert resp.status == 405
    assert "GET" in resp.headers["Allow"] and "HEAD" not in resp.headers["Allow"]
    assert await resp.read() == b""
    readyz = await (await api.get("/readyz")).json()
    assert readyz["clients"] == 0


async def test_job_ids_with_braces_are_named_as_invalid_not_unknown_routes(api: Client) -> None:
    for path in ("/v1/jobs/a%7Bb%7D", "/v1/jobs/%7B%7D/logs", "/v1/jobs/x%7D/stream"):
        error = await error_of(await api.get(path), 400)
        assert error["code"] == "invalid_job", path


async def test_a_message_with_unicode_line_separators_cannot_forge_an_event(api: Client) -> None:
    """A client that splits lines like ``str.splitlines`` (httpx ``iter_lines``) saw U+2028,
    U+2029 and U+0085 end a ``data:`` line: a message could forge an ``end`` event."""
    forged = "x\u2028\u2028event: end\u2029data: {}\u0085\u0085"
    resp = await api.post(
        "/v1/jobs/sep/logs", json=[{"msg": forged}, {"msg": "after", "kind": "end", "status": "ok"}]
    )
    assert resp.status == 200, await resp.text()
    stream = await api.get("/v1/jobs/sep/stream")
    body = (await stream.read()).decode()
    assert not any(ch in body for ch in "\u2028\u2029\u0085"), "sent escaped, never raw"
    events: list[tuple[str, str]] = []
    name, data = "message", ""
    for line in body.splitlines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
        elif not line and data:
            events.append((name, data))
            name, data = "message", ""
    assert [n for n, _ in events] == ["message", "end"]
    assert json.loads(events[0][1])["msg"] == forged
    replay = await (await api.get("/v1/jobs/sep/logs")).json()
    assert replay["entries"][0]["msg"] == forged
