"""deploy/nginx.conf rendered the way the compose nginx service renders it: shared by
tests/system/test_compose.py (which checks it against the code) and tests/system/test_nginx.py
(which runs it in a real nginx)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.support.paths import ROOT

COMPOSE = ROOT / "docker-compose.yml"
TEMPLATES_DIR = "/etc/nginx/templates/"
TEMPLATE_SUFFIX = ".template"  # the nginx image's NGINX_ENVSUBST_TEMPLATE_SUFFIX default
SERVER_LINE = re.compile(r"server\s+([^\s;]+)([^;]*);")


def load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def nginx_service(compose: Mapping[str, Any]) -> dict[str, Any]:
    found = [s for s in compose["services"].values() if str(s.get("image", "")).startswith("nginx:")]
    assert len(found) == 1, "exactly one service runs the official nginx image"
    service: dict[str, Any] = found[0]
    return service


def nginx_template(compose: Mapping[str, Any]) -> tuple[Path, str]:
    """The template file the nginx service mounts and the path the image renders it from."""
    for volume in nginx_service(compose).get("volumes", []):
        source, target, *_ = str(volume).split(":")
        if target.startswith(TEMPLATES_DIR) and target.endswith(TEMPLATE_SUFFIX):
            return (ROOT / source).resolve(), target
    raise AssertionError(f"the nginx service mounts no {TEMPLATES_DIR}*{TEMPLATE_SUFFIX}")


def envsubst(text: str, values: Mapping[str, str]) -> str:
    """What ``envsubst '${A} ${B}'`` does: replace ``$NAME`` and ``${NAME}`` for the listed names
    only, so nginx's own ``$variables`` pass through untouched."""
    if not values:
        return text
    names = "|".join(re.escape(name) for name in values)
    pattern = re.compile(r"\$(?:\{(" + names + r")\}|(" + names + r")(?![A-Za-z0-9_]))")
    return pattern.sub(lambda m: values[m[1] or m[2]], text)


def substituted_env(env: Mapping[str, str]) -> dict[str, str]:
    """The names the nginx image's entrypoint hands to envsubst: every variable whose name matches
    NGINX_ENVSUBST_FILTER (an awk ``~`` match, i.e. a regex search; empty: all)."""
    pattern = re.compile(env.get("NGINX_ENVSUBST_FILTER", ""))
    return {name: value for name, value in env.items() if pattern.search(name)}


def render_nginx_conf(gateways: Mapping[str, str], listen_port: int) -> str:
    """deploy/nginx.conf rendered from the compose nginx service's own environment, with each
    compose upstream (``gateway1:8080``) moved to a test address (``127.0.0.1:PORT``) and nginx
    listening on ``listen_port``: the failover parameters stay exactly those of the deployment."""
    compose = load_compose()
    env = {k: str(v) for k, v in nginx_service(compose)["environment"].items()}
    servers = upstream_servers(env["GATEWAY_UPSTREAMS"])
    assert set(gateways) == set(servers), f"compose upstreams are {sorted(servers)}"
    env["GATEWAY_UPSTREAMS"] = SERVER_LINE.sub(
        lambda m: f"server {gateways[m[1]]}{m[2]};", env["GATEWAY_UPSTREAMS"]
    )
    env["LISTEN_PORT"] = str(listen_port)
    path, _ = nginx_template(compose)
    return envsubst(path.read_text(), substituted_env(env))


def upstream_servers(value: str) -> list[str]:
    """``host:port`` of every ``server`` line in a GATEWAY_UPSTREAMS value."""
    return [m[1] for m in SERVER_LINE.finditer(value)]
