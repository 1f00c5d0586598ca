"""Job-scoped auth and the CORS allow-list, in-process against a real redis-server: a token for one
job never reads another (meta, replay, stream, list), bad tokens are 401 and out-of-scope ones 403,
publishing needs the publish scope, the viewer and EventSource work with ``?token=``, health stays
open, auth off changes nothing, ``logbroker token`` mints what the gateway accepts, and CORS
answers only the origins it lists."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import subprocess
import sys
import time
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from pydantic import ValidationError
from yarl import URL

from broker import SyncPublisher
from gateway.api.auth import RedactingAccessLogger, mint_token, redact
from gateway.cli.redis_server import RedisServer
from gateway.settings import GatewaySettings
from tests.support.fixture_types import Client, MakeGateway
from tests.support.helpers import error_of
from tests.support.jobs import publish_steps
from tests.support.sse_client import parse

SECRET = "test-secret-" + "x" * 52  # 64 bytes: long enough for HS512 too (the alg test)
ORIGIN = "https://ui.example.com"


def token(jobs: str = "job-a", scope: str | list[str] = "read", *, ttl: int = 600, **claims: Any) -> str:
    """A token as a third party would sign it: any claims, any secret, any algorithm."""
    secret = claims.pop("secret", SECRET)
    algorithm = claims.pop("algorithm", "HS256")
    body = {"jobs": jobs, "scope": scope, "exp": int(time.time()) + ttl, **claims}
    return jwt.encode({k: v for k, v in body.items() if v is not None}, secret, algorithm=algorithm)


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


@pytest.fixture
async def secured(redis_server: RedisServer, make_gateway: MakeGateway) -> Client:
    """An auth-on gateway with two ended jobs, job-a and job-b."""
    for job in ("job-a", "job-b"):
        publish_steps(redis_server.url, job, {"s": (2, 3)}, name=job)
    return await make_gateway(auth_secret=SECRET)


async def stream_events(api: Client, path: str, headers: dict[str, str] | None = None) -> list[Any]:
    resp = await api.get(path, headers=headers or {})
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "text/event-stream"
    return [e.json() for e in parse(await asyncio.wait_for(resp.read(), 20)).events]


async def test_a_token_for_job_a_never_reads_job_b(secured: Client) -> None:
    auth = bearer(token("job-a"))
    for path in (
        "/v1/jobs/job-b",
        "/v1/jobs/job-b/logs",
        "/v1/jobs/job-b/stream",
        "/v1/jobs/job-b/stream?tail=5",
    ):
        error = await error_of(await secured.get(path, headers=auth), 403)
        assert error["code"] == "forbidden" and "job-b" in error["message"], path
        query = await secured.get(f"{path}{'&' if '?' in path else '?'}token={token('job-a')}")
        assert (await error_of(query, 403))["code"] == "forbidden", path
    meta = await (await secured.get("/v1/jobs/job-a", headers=auth)).json()
    assert meta["job"] == "job-a" and meta["entries"] == 14
    replay = await (await secured.get("/v1/jobs/job-a/logs?limit=1000", headers=auth)).json()
    assert {e["job"] for e in replay["entries"]} == {"job-a"} and len(replay["entries"]) == 14
    events = await stream_events(secured, "/v1/jobs/job-a/stream", auth)
    assert {e["job"] for e in events} == {"job-a"} and len(events) == 14
    listed = await (await secured.get("/v1/jobs", headers=auth)).json()
    assert listed == {"jobs": [listed["jobs"][0]], "next": None} and listed["jobs"][0]["job"] == "job-a"


async def test_a_wildcard_token_reads_every_job_its_pattern_covers(secured: Client) -> None:
    auth = bearer(token("job-?"))
    for job in ("job-a", "job-b"):
        assert (await secured.get(f"/v1/jobs/{job}/logs", headers=auth)).status == 200
    body = await (await secured.get("/v1/jobs", headers=bearer(token("*")))).json()
    assert [j["job"] for j in body["jobs"]] == ["job-b", "job-a"]


async def test_the_job_list_is_filtered_and_pages_over_the_filtered_list(
    redis_server: RedisServer, make_gateway: MakeGateway
) -> None:
    with SyncPublisher(redis_server.url) as pub:  # 12 of ours among 300 others, interleaved
        for i in range(300):
            pub.job(f"other-{i:03d}").info("x")
            if i % 25 == 0:
                pub.job(f"team-{i // 25:02d}").info("x")
    api = await make_gateway(auth_secret=SECRET)
    expected = [f"team-{i:02d}" for i in reversed(range(12))]
    auth = bearer(token("team-*"))
    for limit in (1, 5, 12, 50):
        seen: list[str] = []
        cursor = None
        for _ in range(100):
            query = f"/v1/jobs?limit={limit}" + (f"&cursor={cursor}" if cursor else "")
            body = await (await api.get(query, headers=auth)).json()
            assert len(body["jobs"]) <= limit
            seen += [j["job"] for j in body["jobs"]]
            cursor = body["next"]
            if cursor is None:
                break
        assert seen == expected, f"limit={limit}"
    everything = await (await api.get("/v1/jobs?limit=1000", headers=bearer(token("*")))).json()
    assert len(everything["jobs"]) == 312
    nothing = await (await api.get("/v1/jobs", headers=bearer(token("nobody-*")))).json()
    assert nothing == {"jobs": [], "next": None}


def _tampered_payload() -> str:
    header, _, signature = token("job-a").split(".")
    payload = base64.urlsafe_b64encode(json.dumps({"jobs": "*", "scope": "read", "exp": 2**40}).encode())
    return f"{header}.{payload.decode().rstrip('=')}.{signature}"


def _flipped_signature() -> str:
    head, _, signature = token("job-a").rpartition(".")
    return f"{head}.{('A' if signature[0] != 'A' else 'B') + signature[1:]}"


def _alg_none() -> str:
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').decode().rstrip("=")
    payload = base64.urlsafe_b64encode(json.dumps({"jobs": "*", "scope": "read", "exp": 2**40}).encode())
    return f"{header}.{payload.decode().rstrip('=')}."


BAD_TOKENS = {
    "expired": lambda: token(ttl=-60),
    "tampered-payload": _tampered_payload,
    "flipped-signature": _flipped_signature,
    "alg-none": _alg_none,
    "wrong-secret": lambda: token(secret="another-secret-" + "y" * 32),
    "hs512": lambda: token(algorithm="HS512"),
    "no-exp": lambda: jwt.encode({"jobs": "*", "scope": "read"}, SECRET, algorithm="HS256"),
    "bad-pattern": lambda: token("job-[ab]"),
    "no-pattern": lambda: token(None),
    "bad-scope": lambda: token(scope="admin"),
    "empty-scope": lambda: token(scope=[]),
    "garbage": lambda: "not.a.token",
    "random": lambda: "x" * 40,
}


@pytest.mark.parametrize("name", list(BAD_TOKENS))
async def test_bad_tokens_are_401_in_the_header_and_in_the_query(secured: Client, name: str) -> None:
    bad = BAD_TOKENS[name]()
    for resp in (
        await secured.get("/v1/jobs/job-a/logs", headers=bearer(bad)),
        await secured.get("/v1/jobs/job-a/stream", params={"token": bad}),
    ):
        error = await error_of(resp, 401)
        assert error["code"] == "unauthorized"
        assert resp.headers["WWW-Authenticate"] == 'Bearer realm="logbroker", error="invalid_token"'
        assert bad not in error["message"]


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer "}, {"Authorization": "Basic dXNlcjpwdw=="}, {"Authorization": "Bearer"}],
    ids=["none", "empty-bearer", "basic", "bare-scheme"],
)
async def test_no_usable_token_is_401(secured: Client, headers: dict[str, str]) -> None:
    for path in ("/v1/jobs", "/v1/jobs/job-a", "/v1/jobs/job-a/logs", "/v1/jobs/job-a/stream", "/metrics"):
        resp = await secured.get(path, headers=headers)
        assert (await error_of(resp, 401))["code"] == "unauthorized", path
        assert resp.headers["WWW-Authenticate"].startswith('Bearer realm="logbroker"')
    resp = await secured.post("/v1/jobs/job-a/logs", json=[{"msg": "x"}], headers=headers)
    assert (await error_of(resp, 401))["code"] == "unauthorized"
    resp = await secured.get("/v1/jobs/job-a/logs?token=a&token=b")
    assert (await error_of(resp, 401))["code"] == "unauthorized"


async def test_expiry_allows_only_the_configured_leeway(
    redis_server: RedisServer, make_gateway: MakeGateway
) -> None:
    publish_steps(redis_server.url, "job-a", {"s": (1, 1)})
    just_expired = token(ttl=-3)
    lenient = await make_gateway(auth_secret=SECRET, auth_leeway_s=30)
    assert (await lenient.get("/v1/jobs/job-a", headers=bearer(just_expired))).status == 200
    strict = await make_gateway(auth_secret=SECRET, auth_leeway_s=0)
    error = await error_of(await strict.get("/v1/jobs/job-a", headers=bearer(just_expired)), 401)
    assert error["message"] == "token expired"


async def test_publishing_needs_the_publish_scope_for_that_job(secured: Client) -> None:
    entries = [{"msg": "hello", "src": "ext", "seq": 1}]
    for scope, job, status in [  # job-a has ended (nothing is stored after an end): job-a-2 runs
        ("read", "job-a-2", 403),
        ("metrics", "job-a-2", 403),
        ("publish", "job-b", 403),
        ("publish", "job-a-2", 200),
        ("read publish", "job-c", 403),
    ]:
        resp = await secured.post(
            f"/v1/jobs/{job}/logs", json=entries, headers=bearer(token("job-a*", scope))
        )
        assert resp.status == status, (scope, job, await resp.text())
        if status == 403:
            assert (await resp.json())["error"]["code"] == "forbidden"
    only_publish = bearer(token("job-a", "publish"))
    for path in ("/v1/jobs/job-a", "/v1/jobs/job-a/logs", "/v1/jobs/job-a/stream"):
        assert (await error_of(await secured.get(path, headers=only_publish), 403))["code"] == "forbidden"
    replay = await (
        await secured.get("/v1/jobs/job-a-2/logs?limit=1&order=desc", headers=bearer(token("job-a*")))
    ).json()
    assert replay["entries"][0]["msg"] == "hello"


async def test_sse_and_json_accept_the_token_in_the_query(redis_server: RedisServer, secured: Client) -> None:
    query = f"token={token('job-a')}"
    events = await stream_events(secured, f"/v1/jobs/job-a/stream?{query}")
    assert len(events) == 14 and events[-1]["kind"] == "end"
    resp = await secured.get(f"/v1/jobs/job-a/stream?{query}", headers={"Last-Event-ID": events[-1]["id"]})
    assert resp.status == 204  # after the end: EventSource stops reconnecting
    assert (await secured.get(f"/v1/jobs/job-a?{query}")).status == 200
    ndjson = await secured.get(f"/v1/jobs/job-a/logs?format=ndjson&{query}")
    assert ndjson.status == 200 and len((await ndjson.read()).splitlines()) == 14
    listed = await (await secured.get(f"/v1/jobs?{query}")).json()
    assert [j["job"] for j in listed["jobs"]] == ["job-a"]


async def test_a_live_stream_with_a_query_token_gets_new_entries(
    redis_server: RedisServer, make_gateway: MakeGateway
) -> None:
    api = await make_gateway(auth_secret=SECRET)
    resp = await api.get("/v1/jobs/live-1/stream", params={"token": token("live-*")})
    assert resp.status == 200
    with SyncPublisher(redis_server.url) as pub:
        pub.job("live-1").info("first")
        pub.job("live-1").end("completed")
    events = parse(await asyncio.wait_for(resp.read(), 20)).events
    assert events[0].json()["msg"] == "first" and events[-1].event == "end"


async def test_the_viewer_works_with_a_token(secured: Client) -> None:
    page = await secured.get(f"/?token={token('job-a')}")
    assert page.status == 200 and page.content_type == "text/html"
    script = await secured.get("/static/viewer.js")
    assert script.status == 200 and "withToken" in await script.text()


async def test_health_and_the_viewer_are_open_and_metrics_need_the_metrics_scope(secured: Client) -> None:
    for path in ("/healthz", "/readyz", "/", "/static/viewer.js"):
        assert (await secured.get(path)).status == 200, path
    described = any(r.canonical == "/openapi.json" for r in secured.app.router.resources())
    assert (await secured.get("/openapi.json")).status == (200 if described else 401)  # public once routed
    error = await error_of(await secured.get("/metrics", headers=bearer(token("*", "read"))), 403)
    assert "metrics" in error["message"]
    metrics = await secured.get("/metrics", headers=bearer(token("*", "metrics")))
    assert metrics.status == 200 and "logbroker" in await metrics.text()


async def test_unknown_routes_need_a_token_before_they_say_404(secured: Client) -> None:
    assert (await error_of(await secured.get("/v2/nothing"), 401))["code"] == "unauthorized"
    assert (await error_of(await secured.get("/v2/nothing", headers=bearer(token())), 404))[
        "code"
    ] == "not_found"
    wrong = await secured.delete("/v1/jobs/job-a/stream", headers=bearer(token()))
    assert (await error_of(wrong, 405))["code"] == "method_not_allowed"
    invalid = await secured.get("/v1/jobs/bad%20job", headers=bearer(token("*")))
    assert (await error_of(invalid, 400))["code"] == "invalid_job"
    for trick in (
        "/static/..%2Fv1/jobs/job-b/logs",
        "/static%2F..%2Fv1%2Fjobs%2Fjob-b",
        "/healthz/../v1/jobs",
    ):
        resp = await secured.get(URL(trick, encoded=True))  # a public route's openness is not borrowed
        assert resp.status in (401, 404), trick


async def test_auth_off_without_a_secret_changes_nothing(redis_server: RedisServer, api: Client) -> None:
    publish_steps(redis_server.url, "job-a", {"s": (1, 2)})
    assert (await api.get("/v1/jobs")).status == 200
    assert (await api.get("/v1/jobs/job-a?token=garbage")).status == 200
    assert (await api.get("/v1/jobs/job-a/logs", headers=bearer("garbage"))).status == 200
    assert len(await stream_events(api, "/v1/jobs/job-a/stream")) == 8
    assert (await api.post("/v1/jobs/job-x/logs", json=[{"msg": "x"}])).status == 200
    assert (await api.get("/metrics")).status == 200
    resp = await api.get("/v1/jobs", headers={"Origin": ORIGIN})
    assert "Access-Control-Allow-Origin" not in resp.headers and "Vary" not in resp.headers


def test_a_short_secret_is_refused_without_being_echoed() -> None:
    with pytest.raises(ValidationError, match="at least 32 bytes") as info:
        GatewaySettings(redis_url="redis://127.0.0.1:1/0", auth_secret="tooshort-secret")
    assert "tooshort-secret" not in str(info.value)


def run_cli(*args: str, secret: str | None = SECRET) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOGBROKER_")}
    if secret is not None:
        env["LOGBROKER_AUTH_SECRET"] = secret
    command = [sys.executable, "-c", "import sys; from gateway.cli import main; sys.exit(main())", "token"]
    return subprocess.run([*command, *args], env=env, capture_output=True, text=True, timeout=60)


async def test_logbroker_token_mints_a_token_the_gateway_accepts(secured: Client) -> None:
    done = run_cli("--jobs", "job-*", "--scope", "read,publish", "--ttl", "120", "--sub", "ops")
    assert done.returncode == 0, done.stderr
    minted = done.stdout.strip()
    claims = jwt.decode(minted, SECRET, algorithms=["HS256"])
    assert claims["jobs"] == "job-*" and claims["sub"] == "ops"
    assert set(claims["scope"].split()) == {"read", "publish"}
    assert claims["exp"] - claims["iat"] == 120 and abs(claims["iat"] - time.time()) < 60
    assert (await secured.get("/v1/jobs/job-b/logs", headers=bearer(minted))).status == 200
    assert mint_token(SECRET, jobs="*", scopes=["metrics"], ttl_s=60).count(".") == 2


@pytest.mark.parametrize(
    ("args", "secret", "says"),
    [
        (["--jobs", "a"], None, "LOGBROKER_AUTH_SECRET"),
        (["--jobs", "a"], "short", "at least 32 bytes"),
        (["--jobs", "a/b"], SECRET, "jobs must be"),
        (["--jobs", "a", "--scope", "read,admin"], SECRET, "scope must be"),
        (["--jobs", "a", "--ttl", "0"], SECRET, "ttl must be"),
        (["--jobs", "a", "--ttl", "soon"], SECRET, "invalid int"),
        (["--scope", "read"], SECRET, "--jobs"),
    ],
)
def test_logbroker_token_refuses_bad_input_with_exit_2(
    args: list[str], secret: str | None, says: str
) -> None:
    done = run_cli(*args, secret=secret)
    assert done.returncode == 2 and says in done.stderr and not done.stdout
    assert "input_value" not in done.stderr  # a refused secret is never echoed


async def test_cors_answers_only_listed_origins(redis_server: RedisServer, make_gateway: MakeGateway) -> None:
    publish_steps(redis_server.url, "job-a", {"s": (1, 1)})
    api = await make_gateway(cors_origins=f"{ORIGIN}/, http://localhost:5173", auth_secret=SECRET)
    ok = await api.get("/v1/jobs/job-a", headers={"Origin": ORIGIN, **bearer(token())})
    assert ok.status == 200
    assert ok.headers["Access-Control-Allow-Origin"] == ORIGIN and ok.headers["Vary"] == "Origin"
    assert ok.headers["Access-Control-Allow-Headers"] == "Authorization, Last-Event-ID, Content-Type"
    denied = await api.get("/v1/jobs/job-a", headers={"Origin": "https://evil.example", **bearer(token())})
    assert denied.status == 200 and "Access-Control-Allow-Origin" not in denied.headers
    unauthorized = await api.get("/v1/jobs/job-a", headers={"Origin": ORIGIN})  # a browser can read the 401
    assert unauthorized.status == 401 and unauthorized.headers["Access-Control-Allow-Origin"] == ORIGIN
    stream = await api.get(
        "/v1/jobs/job-a/stream", params={"token": token()}, headers={"Origin": "http://localhost:5173"}
    )
    assert stream.status == 200 and stream.headers["Access-Control-Allow-Origin"] == "http://localhost:5173"
    await stream.read()


async def test_cors_preflight(make_gateway: MakeGateway) -> None:
    api = await make_gateway(cors_origins=[ORIGIN], auth_secret=SECRET)
    ask = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    ok = await api.options("/v1/jobs/job-a/logs", headers={"Origin": ORIGIN, **ask})
    assert ok.status == 204, await ok.text()
    assert ok.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "POST" in ok.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in ok.headers["Access-Control-Allow-Headers"]
    denied = await api.options("/v1/jobs/job-a/logs", headers={"Origin": "https://evil.example", **ask})
    assert (await error_of(denied, 403))["code"] == "origin_not_allowed"
    assert "Access-Control-Allow-Origin" not in denied.headers
    not_preflight = await api.options("/v1/jobs/job-a/logs", headers={"Origin": ORIGIN})
    assert not_preflight.status == 401  # a plain OPTIONS is a request like any other


async def test_without_cors_origins_a_preflight_is_not_answered(api: Client) -> None:
    ask = {"Origin": ORIGIN, "Access-Control-Request-Method": "GET"}
    resp = await api.options("/v1/jobs", headers=ask)
    assert resp.status == 405 and "Access-Control-Allow-Origin" not in resp.headers


@pytest.mark.parametrize("origins", ["ftp://x.example", "https://x.example/path", "not an origin"])
def test_bad_cors_origins_are_refused(origins: str) -> None:
    with pytest.raises(ValidationError, match="CORS origin"):
        GatewaySettings(cors_origins=origins)


def test_cors_origins_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOGBROKER_CORS_ORIGINS", "https://A.example , http://localhost:8080/,")
    assert GatewaySettings().cors_origins == ("https://a.example", "http://localhost:8080")
    monkeypatch.setenv("LOGBROKER_CORS_ORIGINS", "")
    assert GatewaySettings().cors_origins == ()


def test_tokens_never_reach_the_access_log(caplog: pytest.LogCaptureFixture) -> None:
    secret_token = token("job-a")
    request = make_mocked_request(
        "GET",
        f"/v1/jobs/job-a/stream?after=1-0&token={secret_token}",
        headers={"Referer": f"http://gw/?token={secret_token}", "Authorization": f"Bearer {secret_token}"},
    )
    logger = logging.getLogger("test.access")
    with caplog.at_level(logging.INFO, logger="test.access"):
        RedactingAccessLogger(logger, "").log(request, web.Response(status=200), 0.01)
    (line,) = [r.getMessage() for r in caplog.records]
    assert secret_token not in line
    assert (
        "/v1/jobs/job-a/stream?after=1-0&token=<redacted>" in line and "http://gw/?token=<redacted>" in line
    )
    assert redact("/x?a=1&TOKEN=abc&b=2") == "/x?a=1&TOKEN=<redacted>&b=2"


async def test_a_token_that_outlives_the_longest_ttl_is_refused(secured: Client) -> None:
    """A token with ``exp`` in year 9999 was accepted: a password that never expires."""
    forever = token(ttl=10**10)
    error = await error_of(await secured.get("/v1/jobs/job-a", headers=bearer(forever)), 401)
    assert "days from now" in error["message"]
    assert (await secured.get("/v1/jobs/job-a", headers=bearer(token(ttl=300 * 86400)))).status != 401


def test_a_token_under_an_encoded_parameter_name_is_redacted_too(caplog: pytest.LogCaptureFixture) -> None:
    """``?%74oken=<jwt>`` authenticates (the gateway decodes parameter names) but was logged as is."""
    secret_token = token("job-a")
    for spelling in ("%74oken", "%54OKEN", "to%6Ben", "token%20", "+token"):
        assert secret_token not in redact(f"/v1/jobs/job-a/stream?a=1&{spelling}={secret_token}&b=2"), (
            spelling
        )
    assert redact("/x?a=1&tokens=abc") == "/x?a=1&tokens=abc", "another parameter stays as it is"
    assert redact("/v1/jobs/token=abc") == "/v1/jobs/token=abc", "a path is not a query"


async def test_a_job_list_cursor_never_names_a_job_the_token_does_not_cover(
    redis_server: RedisServer, make_gateway: MakeGateway
) -> None:
    """After 20 rounds without filling a page, ``next`` was the last job scanned, e.g.
    ``1796143447190:tenantB-secret-project-99`` for a ``tenantA-*`` token."""
    with SyncPublisher(redis_server.url) as pub:
        pub.job("tenantA-old").info("x")
        for i in range(2500):
            pub.job(f"tenantB-secret-{i:04d}").info("x")
        pub.job("tenantA-new").info("x")
    api = await make_gateway(auth_secret=SECRET)
    auth = bearer(token("tenantA-*"))
    seen: list[str] = []
    cursors: list[str] = []
    cursor = None
    for _ in range(20):
        query = "/v1/jobs?limit=5" + (f"&cursor={cursor}" if cursor else "")
        body = await (await api.get(query, headers=auth)).json()
        seen += [j["job"] for j in body["jobs"]]
        cursor = body["next"]
        if cursor is None:
            break
        cursors.append(cursor)
    assert seen == ["tenantA-new", "tenantA-old"], "paging still reaches every covered job"
    assert cursors, "the hidden jobs made the list answer before the end"
    assert not [c for c in cursors if "tenantB" in c], cursors
    forged = await api.get("/v1/jobs?cursor=1:~" + "0" * 32, headers=auth)
    assert forged.status == 200, "an unknown hash starts that millisecond from its top"
