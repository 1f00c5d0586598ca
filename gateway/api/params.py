"""Query parameters and path parts, validated strictly: a bad one is a 400 naming it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.typedefs import Middleware

from broker.constants import KINDS, LEVELS
from broker.entry import check_job_id, check_name
from broker.errors import InvalidEntry

from ..errors import bad_request
from ..live.filter import Filter
from .error_middleware import Handler

if TYPE_CHECKING:
    from multidict import MultiMapping  # aiohttp's; only named in annotations

FILTERS = frozenset({"step", "worker", "level", "kind"})
# The query parameters each API route takes (``token`` is auth's, on every route). Any other, or
# one given twice, is a 400 naming it: ``levle=error`` silently filtering nothing, or
# ``limit=1&limit=abc`` taking the first, hid the client's mistake.
ROUTE_QUERY: dict[tuple[str, str], frozenset[str]] = {
    ("GET", "/v1/jobs"): frozenset({"limit", "cursor", "status"}),
    ("GET", "/v1/jobs/{job}"): frozenset(),
    ("GET", "/v1/jobs/{job}/logs"): frozenset({"after", "before", "limit", "order", "format"}) | FILTERS,
    ("POST", "/v1/jobs/{job}/logs"): frozenset(),
    ("GET", "/v1/jobs/{job}/stream"): frozenset({"after", "tail"}) | FILTERS,
}
ANY_ROUTE = frozenset({"token"})


def job_of(request: web.Request) -> str:
    try:
        return check_job_id(request.match_info["job"])
    except InvalidEntry as e:
        raise bad_request("invalid_job", str(e)) from None


def int_param(query: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 12:  # "²".isdigit() is True
        raise bad_request("invalid_parameter", f"{name} must be an integer {lo}..{hi}, got {raw!r:.40}")
    value = int(raw)
    if not lo <= value <= hi:
        raise bad_request("invalid_parameter", f"{name} must be an integer {lo}..{hi}, got {value}")
    return value


def filter_of(query: Mapping[str, str]) -> Filter:
    """``step``, ``worker``, ``level`` (minimum) and ``kind`` (one or a comma list)."""
    try:
        step = check_name("step", query["step"]) if "step" in query else None
        worker = check_name("worker", query["worker"]) if "worker" in query else None
    except InvalidEntry as e:
        raise bad_request("invalid_parameter", str(e)) from None
    min_level = 0
    if "level" in query:
        level = LEVELS.get(query["level"].lower())
        if level is None:
            raise bad_request(
                "invalid_level", f"level must be one of {', '.join(LEVELS)}, got {query['level']!r:.40}"
            )
        min_level = level
    kinds = None
    if "kind" in query:
        names = [k.strip() for k in query["kind"].split(",")]
        unknown = [k for k in names if k not in KINDS]
        if unknown or not names:
            raise bad_request(
                "invalid_kind", f"kind must be among {', '.join(KINDS)}, got {query['kind']!r:.40}"
            )
        kinds = frozenset(KINDS[k] for k in names)
    return Filter(step, worker, min_level, kinds)


def query_middleware() -> Middleware:
    """Checks the query of the API routes against ``ROUTE_QUERY`` before their handler runs."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        method = "GET" if request.method == "HEAD" else request.method
        allowed = ROUTE_QUERY.get((method, resource.canonical)) if resource is not None else None
        if allowed is not None:
            check_query(request.query, allowed | ANY_ROUTE)
        return await handler(request)

    return middleware


def check_query(query: MultiMapping[str], allowed: frozenset[str]) -> None:
    seen: set[str] = set()
    for name, _ in query.items():  # a repeated name comes once per value (its keys only once)
        if name not in allowed:
            known = ", ".join(sorted(allowed))
            raise bad_request(
                "unknown_parameter", f"unknown query parameter {name!r:.40} (this route takes {known})"
            )
        if name in seen:
            raise bad_request("repeated_parameter", f"query parameter {name!r:.40} is given more than once")
        seen.add(name)
