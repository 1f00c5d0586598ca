"""Job-scoped auth (docs/design.md §5): off by default, on when ``LOGBROKER_AUTH_SECRET`` is set.

A token is a JWT signed with HS256 and the shared secret. Its claims say what it may do:

* ``jobs``: a job-id glob (``mgr-*``, ``*``; ``*`` and ``?`` wildcards, matched case-sensitively);
* ``scope``: ``read`` (meta, replay, stream, the job list), ``publish`` (ingest), ``metrics``
  (``GET /metrics``), as a list or a space-separated string;
* ``exp`` (required: a token that never expires is a leaked password), optional ``sub``.

One middleware checks every request that is not public (health, the viewer page and its static
files, the OpenAPI document): 401 ``unauthorized`` when the token is missing, malformed, expired or
badly signed, 403 ``forbidden`` when it is valid but its scope or job pattern does not cover the
request. The job list is not refused but filtered: the grant is left on the request under
:data:`AUTH` and ``jobs.list_jobs`` shows only the jobs it covers. A stream is checked when it
connects; it is not cut when the token expires later (its reconnect is checked again).

Tokens come as ``Authorization: Bearer <t>`` or ``?token=<t>`` (a browser's EventSource cannot set
headers). They are never logged: messages name what is wrong, not the token, and
:class:`RedactingAccessLogger` masks ``token=`` in access-log lines.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from urllib.parse import unquote_plus

import jwt
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Middleware
from aiohttp.web_request import BaseRequest

from ..errors import ApiError
from .error_middleware import Handler
from .params import job_of

ALGORITHM = "HS256"
SCOPES = ("read", "publish", "metrics")
MAX_TTL_S = 366 * 24 * 3600
# routes open without a token (health, the viewer page and its files, the API description)
PUBLIC_ROUTES = frozenset({"/", "/healthz", "/readyz", "/openapi.json", "/static"})
_PATTERN_RE = re.compile(r"[A-Za-z0-9._:*?-]{1,128}")  # job-id characters plus the two wildcards
_SUB_RE = re.compile(r"[^\x00-\x1f\x7f]{1,128}")
_REALM = 'Bearer realm="logbroker"'
# what each route needs; None: a valid token of any scope (unknown routes then answer 404/405)
_ROUTE_SCOPES: dict[tuple[str, str], str] = {
    ("GET", "/v1/jobs"): "read",
    ("GET", "/v1/jobs/{job}"): "read",
    ("GET", "/v1/jobs/{job}/logs"): "read",
    ("GET", "/v1/jobs/{job}/stream"): "read",
    ("POST", "/v1/jobs/{job}/logs"): "publish",
    ("POST", "/v1/logs"): "publish",  # OTLP: each record's job is checked by the route (gateway.api.otlp)
    ("GET", "/metrics"): "metrics",
}


@dataclass(frozen=True, slots=True)
class Grant:
    """What a verified token allows."""

    jobs: str
    scopes: frozenset[str]
    sub: str | None = None

    @property
    def all_jobs(self) -> bool:
        return self.jobs == "*"

    def covers(self, job: str) -> bool:
        return fnmatchcase(job, self.jobs)


AUTH = web.RequestKey("auth", Grant)


def check_pattern(value: object) -> str:
    """A ``jobs`` claim: job-id characters and ``*``/``?`` only, so it can never smuggle a
    character class or anything that is not a possible job id."""
    if not isinstance(value, str) or _PATTERN_RE.fullmatch(value) is None:
        raise ValueError(
            f"jobs must be a job-id pattern matching [A-Za-z0-9._:*?-]{{1,128}}, got {value!r:.80}"
        )
    return value


def check_scopes(value: object) -> frozenset[str]:
    """``scope``: a list, or a space- or comma-separated string, of known scopes; at least one."""
    if isinstance(value, str):
        names: Iterable[object] = value.replace(",", " ").split()
    elif isinstance(value, list):
        names = value
    else:
        raise ValueError("scope must be a list or a space-separated string")
    items = list(names)
    if not items or not all(isinstance(s, str) and s in SCOPES for s in items):
        raise ValueError(f"scope must be among {', '.join(SCOPES)}, got {value!r:.80}")
    return frozenset(str(s) for s in items)


def check_sub(value: object) -> str | None:
    if value is not None and (not isinstance(value, str) or _SUB_RE.fullmatch(value) is None):
        raise ValueError("sub must be 1..128 characters without control characters")
    return value


def mint_token(secret: str, *, jobs: str, scopes: Iterable[str], ttl_s: int, sub: str | None = None) -> str:
    """A signed token; ``logbroker token`` is its command line. Claims are validated as the
    gateway will validate them, so an operator never hands out a token that cannot work."""
    if not 1 <= ttl_s <= MAX_TTL_S:
        raise ValueError(f"ttl must be 1..{MAX_TTL_S} seconds, got {ttl_s}")
    now = int(time.time())
    claims: dict[str, object] = {
        "jobs": check_pattern(jobs),
        "scope": " ".join(sorted(check_scopes(list(scopes)))),
        "iat": now,
        "exp": now + ttl_s,
    }
    if check_sub(sub) is not None:
        claims["sub"] = sub
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify_token(token: str, secret: str, leeway_s: float) -> Grant:
    """The grant of a token, or a 401 naming what is wrong (never echoing the token)."""
    try:
        claims = jwt.decode(
            token, secret, algorithms=[ALGORITHM], leeway=leeway_s, options={"require": ["exp"]}
        )
    except jwt.ExpiredSignatureError:
        raise unauthorized("token expired") from None
    except jwt.InvalidSignatureError:
        raise unauthorized("token signature is invalid") from None
    except jwt.InvalidAlgorithmError:
        raise unauthorized(f"token must be signed with {ALGORITHM}") from None
    except jwt.MissingRequiredClaimError:
        raise unauthorized("token has no exp claim") from None
    except jwt.PyJWTError as e:
        raise unauthorized(f"token is malformed ({type(e).__name__})") from None
    exp = claims.get("exp")
    if isinstance(exp, int | float) and exp - time.time() > MAX_TTL_S:
        # a token that lives for ever is a leaked password: the bound mint_token keeps, enforced
        raise unauthorized(f"token expires more than {MAX_TTL_S // 86400} days from now")
    try:
        return Grant(
            check_pattern(claims.get("jobs")), check_scopes(claims.get("scope")), check_sub(claims.get("sub"))
        )
    except ValueError as e:
        raise unauthorized(f"token claims are invalid: {e}") from None


def unauthorized(message: str, *, missing: bool = False) -> ApiError:
    challenge = _REALM if missing else f'{_REALM}, error="invalid_token"'
    return ApiError(401, "unauthorized", message, {"WWW-Authenticate": challenge})


def forbidden(message: str) -> ApiError:
    return ApiError(403, "forbidden", message, {"WWW-Authenticate": f'{_REALM}, error="insufficient_scope"'})


def token_of(request: web.Request) -> str:
    """The bearer token of a request: the ``Authorization`` header first, else ``?token=``."""
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthorized("Authorization must be 'Bearer <token>'")
        return token.strip()
    tokens = request.query.getall("token", [])
    if len(tokens) > 1:
        raise unauthorized("give one token, not several")
    if not tokens or not tokens[0]:
        raise unauthorized(
            "this gateway needs a token: 'Authorization: Bearer <token>' or ?token=", missing=True
        )
    return tokens[0]


def is_public(request: web.Request) -> bool:
    """Decided by the route the router resolved, not by the raw path, so no spelling of a path
    (``/static/..%2F``, dot segments) can borrow a public route's openness."""
    resource = request.match_info.route.resource
    return resource is not None and resource.canonical in PUBLIC_ROUTES


def authorize(request: web.Request, grant: Grant) -> None:
    """403 unless the grant covers the route's scope and, on a job's routes, that job."""
    resource = request.match_info.route.resource
    method = "GET" if request.method == "HEAD" else request.method
    scope = _ROUTE_SCOPES.get((method, resource.canonical)) if resource is not None else None
    if scope is None:
        return
    if scope not in grant.scopes:
        raise forbidden(f"this token lacks the {scope!r} scope")
    if "job" in request.match_info:
        job = job_of(request)
        if not grant.covers(job):
            raise forbidden(f"this token does not cover job {job!r}")


def auth_middleware(secret: str, leeway_s: float) -> Middleware:
    """The middleware for one secret; ``create_app`` installs it after ``error_middleware``."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if is_public(request):
            return await handler(request)
        grant = verify_token(token_of(request), secret, leeway_s)
        authorize(request, grant)
        request[AUTH] = grant
        return await handler(request)

    return middleware


def redact(text: str) -> str:
    """A ``token`` parameter's value in a URL becomes ``<redacted>``, whatever the spelling of its
    name (``?%74oken=`` authenticates like ``?token=``: names are compared decoded)."""
    head, sep, query = text.partition("?")
    if not sep:
        return text
    parts = []
    for part in query.split("&"):
        name, _, _ = part.partition("=")
        if unquote_plus(name).strip().lower() == "token":
            part = f"{name}=<redacted>"
        parts.append(part)
    return f"{head}?{'&'.join(parts)}"


class RedactingAccessLogger(AbstractAccessLogger):
    """aiohttp's default access line, but with ``?token=`` masked in the request line and Referer
    (the viewer page carries its token in its URL, and browsers send that URL as Referer)."""

    def log(self, request: BaseRequest, response: web.StreamResponse, time: float) -> None:
        version = request.version
        self.logger.info(
            '%s "%s %s HTTP/%d.%d" %d %d %.3fs "%s" "%s"',
            request.remote or "-",
            request.method,
            redact(request.path_qs),
            version.major,
            version.minor,
            response.status,
            response.body_length,
            time,
            redact(request.headers.get("Referer", "-")),
            request.headers.get("User-Agent", "-"),
        )
