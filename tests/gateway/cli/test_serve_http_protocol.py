"""``logbroker serve`` against hostile HTTP, over raw sockets (issue 13, points 7 and 17).

Slowloris: connections that trickle their headers are answered 408 and closed at
``LOGBROKER_HEADER_TIMEOUT_S`` while /healthz answers throughout; a kept-alive client, a stream
and a slow ingest body are not cut. Requests aiohttp's parser refuses (an over-long request line
or header, NUL in a header, bad framing) are answered in the API's JSON error shape, never quote
the token they carried, and close the connection; the gateway keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import resource
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from gateway.api.auth import mint_token
from gateway.cli.redis_server import RedisServer
from tests.support.gateway_process import GatewayProcess

HEADER_TIMEOUT_S = 2.0
SECRET = "s" * 32
# a credential that must never come back: in a header, a query or a body
LEAK = "T0KEN-THAT-MUST-NOT-LEAK"
SLOWLORIS = 1000  # connections trickling headers at once

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("serve-http")
    redis = RedisServer(tmp / "redis", appendonly=False).start()
    gw = GatewayProcess(
        redis.url, tmp / "gw.log", header_timeout_s=HEADER_TIMEOUT_S, heartbeat_s=1, auth_secret=SECRET
    )
    try:
        yield gw.start()
    finally:
        gw.stop()
        redis.stop()


def token(jobs: str = "*", scopes: tuple[str, ...] = ("read", "publish")) -> str:
    return mint_token(SECRET, jobs=jobs, scopes=scopes, ttl_s=600)


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of the one answer in ``raw``."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    return int(status_line.split()[1]), headers, body


def error_in(raw: bytes, status: int) -> dict[str, str]:
    """The ``error`` of a JSON error answer, after checking its status, type and length."""
    got, headers, body = parse(raw)
    assert got == status, raw[:300]
    assert headers["content-type"].startswith("application/json"), raw[:300]
    assert int(headers["content-length"]) == len(body), "one whole answer, then the close"
    error: dict[str, str] = json.loads(body)["error"]
    assert set(error) == {"code", "message"} and error["message"]
    return error


async def exchange(port: int, *parts: bytes, pause_s: float = 0.0, timeout_s: float = 10.0) -> bytes:
    """Everything the gateway sends until it closes the connection (``parts`` sent ``pause_s``
    apart); fails if it leaves the connection open."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for i, part in enumerate(parts):
            if i and pause_s:
                await asyncio.sleep(pause_s)
            writer.write(part)
            await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout_s)
    except TimeoutError:
        pytest.fail(f"the connection was left open for {timeout_s} s")
    finally:
        writer.close()


async def healthz_latency(port: int) -> float:
    started = time.monotonic()
    raw = await exchange(port, b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert parse(raw)[0] == 200, raw
    return time.monotonic() - started


# --- point 7: a deadline for request headers ------------------------------------------------


async def _trickle(port: int) -> tuple[float, bytes]:
    """A slowloris connection: a request line, then one header line a second, never the end."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")

    async def lines() -> None:
        for i in range(60):
            await asyncio.sleep(1)
            writer.write(b"X-Trickle-%d: y\r\n" % i)

    feeding = asyncio.create_task(lines())
    try:
        raw = await asyncio.wait_for(reader.read(), 15)
    except TimeoutError:
        raw = b"(left open)"
    finally:
        feeding.cancel()
        writer.close()
    return time.monotonic() - started, raw


@pytest.fixture
def open_files_for_slowloris() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = SLOWLORIS + 512
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_trickled_headers_get_408_and_a_close_while_healthz_answers(
    gateway: GatewayProcess, open_files_for_slowloris: None
) -> None:
    """1,000 connections sending a header line a second stayed open until aiohttp's 75 s
    keep-alive timeout; now each is answered 408 at the 2 s header deadline and closed."""
    trickles = asyncio.gather(*(_trickle(gateway.port) for _ in range(SLOWLORIS)))
    latencies = []
    while not trickles.done():
        latencies.append(await healthz_latency(gateway.port))
        await asyncio.sleep(0.1)
    results = await trickles
    left_open = [raw for _, raw in results if raw == b"(left open)"]
    assert not left_open, f"{len(left_open)} of {SLOWLORIS} trickling connections left open after 15 s"
    for elapsed, raw in results:
        assert error_in(raw, 408)["code"] == "request_timeout"
        # the client's clock starts once its busy loop sees the connect, the gateway's at accept
        assert HEADER_TIMEOUT_S / 2 <= elapsed <= HEADER_TIMEOUT_S + 3, elapsed
    assert len(latencies) >= 5 and max(latencies) < 1.5, latencies


async def test_a_connection_that_sends_nothing_is_closed_without_an_answer(gateway: GatewayProcess) -> None:
    started = time.monotonic()
    assert await exchange(gateway.port) == b""
    assert HEADER_TIMEOUT_S - 0.1 <= time.monotonic() - started <= HEADER_TIMEOUT_S + 2


async def test_a_kept_alive_client_idles_freely_and_its_next_headers_have_the_deadline(
    gateway: GatewayProcess,
) -> None:
    """Idle between requests is the keep-alive timeout's (75 s); the header deadline counts from
    the first byte of the next request."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    try:
        for _ in range(3):
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            status, headers, _ = parse(head)
            body = await reader.readexactly(int(headers["content-length"]))
            assert status == 200 and json.loads(body) == {"status": "ok"}
            await asyncio.sleep(HEADER_TIMEOUT_S + 0.5)  # idle, on the same connection
        started = time.monotonic()
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")  # a request whose end never comes
        raw = await asyncio.wait_for(reader.read(), 10)
        assert HEADER_TIMEOUT_S - 0.1 <= time.monotonic() - started <= HEADER_TIMEOUT_S + 2
        assert error_in(raw, 408)["code"] == "request_timeout"
    finally:
        writer.close()


async def test_a_stream_and_a_slow_body_outlast_the_header_deadline(gateway: GatewayProcess) -> None:
    auth = {"Authorization": f"Bearer {token()}"}
    async with httpx.AsyncClient(base_url=gateway.url, headers=auth, timeout=10) as http:
        first = await http.post("/v1/jobs/outlast/logs", json=[{"msg": "first", "src": "t", "seq": 1}])
        assert first.status_code == 200, first.text
        seen = b""
        async with http.stream("GET", "/v1/jobs/outlast/stream") as stream:
            chunks = stream.aiter_bytes()
            deadline = time.monotonic() + 3 * HEADER_TIMEOUT_S
            while time.monotonic() < deadline:  # heartbeats every second, well past the deadline
                seen += await asyncio.wait_for(anext(chunks), 5)
            assert b"first" in seen and seen.count(b": heartbeat") >= 3, seen
            # a slow ingest body: one NDJSON line a second, well past the deadline
            lines = [
                json.dumps({"msg": f"slow {i}", "src": "t", "seq": i + 2}).encode() + b"\n" for i in range(5)
            ]
            head = (
                f"POST /v1/jobs/outlast/logs HTTP/1.1\r\nHost: t\r\nAuthorization: {auth['Authorization']}"
                "\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\nConnection: close"
                "\r\n\r\n"
            ).encode()
            chunked = [b"%x\r\n%s\r\n" % (len(line), line) for line in lines]
            raw = await exchange(gateway.port, head, *chunked, b"0\r\n\r\n", pause_s=1.0)
            status, _, body = parse(raw)
            assert status == 200 and json.loads(body)["accepted"] == 5, raw
            while b"slow 4" not in seen:  # the stream is still open, and live
                seen += await asyncio.wait_for(anext(chunks), 5)
    assert all(b"slow %d" % i in seen for i in range(5))


# --- point 17: parser refusals in the JSON error shape, never quoting the request ------------

L = LEAK.encode()
GET = b"GET /healthz HTTP/1.1\r\nHost: t\r\n"
POST = b"POST /v1/jobs/j/logs HTTP/1.1\r\nHost: t\r\n"
CHUNKED = POST + b"Transfer-Encoding: chunked\r\n\r\n"
# (request, status, code): each one quotes the credential the answer must not
HOSTILE: dict[str, tuple[bytes, int, str]] = {
    "a 25 KB path": (
        b"GET /v1/jobs/" + b"a" * 25_000 + b"?token=" + L + b" HTTP/1.1\r\n\r\n",
        414,
        "uri_too_long",
    ),
    "a 17 KB bearer token": (
        GET + b"Authorization: Bearer " + L * 700 + b"\r\n\r\n",
        431,
        "header_too_large",
    ),
    "200 headers": (
        GET + b"".join(b"X-%d: %s\r\n" % (i, L) for i in range(200)) + b"\r\n",
        431,
        "header_too_large",
    ),
    "NUL in a token": (GET + b"Authorization: Bearer " + L + b"\x00x\r\n\r\n", 400, "bad_request"),
    "a control character in a header": (GET + b"X-Leak: " + L + b"\x01\r\n\r\n", 400, "bad_request"),
    "a space in a header name": (GET + b"X " + L + b": 1\r\n\r\n", 400, "bad_request"),
    "a header line without a colon": (GET + L + b"\r\n\r\n", 400, "bad_request"),
    "no space after the method": (
        b"GET/healthz?token=" + L + b" HTTP/1.1\r\nHost: t\r\n\r\n",
        400,
        "bad_request",
    ),
    "a bad method": (b"G@T /healthz?token=" + L + b" HTTP/1.1\r\nHost: t\r\n\r\n", 400, "bad_request"),
    "a bad version": (b"GET /healthz?token=" + L + b" HTTP/9.9\r\nHost: t\r\n\r\n", 400, "bad_request"),
    "LF line ends": (b"GET /healthz?token=" + L + b" HTTP/1.1\nHost: t\n\n", 400, "bad_request"),
    "TLS on the plain port": (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + L, 400, "bad_request"),
    "a bad chunk size": (CHUNKED + b"zz\r\n" + L + b"\r\n0\r\n\r\n", 400, "bad_request"),
    "a chunk longer than its size": (CHUNKED + b"2\r\n[]" + L + b"\r\n0\r\n\r\n", 400, "bad_request"),
    "Content-Length and chunked": (
        POST + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\nX-Leak: " + L + b"\r\n\r\n0\r\n\r\n",
        400,
        "bad_request",
    ),
    "a bad Content-Length": (POST + b"Content-Length: " + L + b"\r\n\r\n", 400, "bad_request"),
}


@pytest.mark.parametrize("name", HOSTILE)
async def test_a_request_the_parser_refuses_gets_json_without_the_token_then_a_close(
    gateway: GatewayProcess, name: str
) -> None:
    request, status, code = HOSTILE[name]
    raw = await exchange(gateway.port, request)  # returns only once the gateway has closed
    assert error_in(raw, status)["code"] == code
    assert L not in raw and b"x00" not in raw
    assert await healthz_latency(gateway.port) < 2, "and the gateway keeps serving"


async def test_a_framing_error_inside_a_body_answers_the_handler_reading_it(gateway: GatewayProcess) -> None:
    """The first chunk reached the ingest handler; the bad one after it left that handler
    waiting for the rest of the body forever (and the client for an answer)."""
    line = json.dumps({"msg": "half", "src": "t", "seq": 1}).encode() + b"\n"
    head = (
        f"POST /v1/jobs/half-body/logs HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token()}\r\n"
        "Content-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    started = time.monotonic()
    chunk, bad_chunk = b"%x\r\n%s\r\n" % (len(line), line), b"zz\r\n" + L + b"\r\n"
    raw = await exchange(gateway.port, head, chunk, bad_chunk, pause_s=0.3)
    assert time.monotonic() - started < 2
    assert error_in(raw, 400)["code"] == "invalid_body" and L not in raw
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        meta = await http.get("/v1/jobs/half-body", headers={"Authorization": f"Bearer {token()}"})
    assert meta.status_code == 404, "nothing of the refused body is stored"


async def test_a_jwt_with_many_claims_fits_in_a_header_and_in_the_query(gateway: GatewayProcess) -> None:
    """aiohttp's 8,190-byte limit refused a 12 KB token (and quoted it back)."""
    claims: dict[str, Any] = {"jobs": "*", "scope": "read", "exp": int(time.time()) + 600}
    claims["groups"] = [f"team-{i:05d}" for i in range(800)]
    big = jwt.encode(claims, SECRET, algorithm="HS256")
    assert 12_000 < len(big) < 16_000
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        by_header = await http.get("/v1/jobs", headers={"Authorization": f"Bearer {big}"})
        by_query = await http.get("/v1/jobs", params={"token": big})
    assert by_header.status_code == 200 and by_query.status_code == 200, (by_header.text, by_query.text)


def test_the_gateway_log_never_holds_a_refused_token(gateway: GatewayProcess) -> None:
    """aiohttp logged each refusal with its message, which quotes the offending line."""
    log = Path(gateway.log_path).read_text()
    assert LEAK not in log
    assert "refused a request from" in log, "each refusal is still logged, by its code"
