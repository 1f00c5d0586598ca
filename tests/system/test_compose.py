"""docker-compose.yml, the Dockerfile and deploy/nginx.conf checked against the code.

Docker does not run on the development machines, so nothing here starts a container. Instead
every claim the deployment makes about the code is checked against the code itself: each
``logbroker`` command line parses with the real CLI parser, each ``LOGBROKER_*`` name is a
settings field (the settings ignore unknown names, so a typo would otherwise go unnoticed) and the
values validate, the ports agree between gateways, nginx's upstreams and the published port, and
the image's entrypoint is the console script pyproject.toml declares. The rendering helpers are
in tests/support/compose.py, shared with tests/system/test_nginx.py, which runs the same template
in a real nginx.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import tomllib
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import pytest

from gateway.cli.command import _parser, settings_from
from gateway.settings import GatewaySettings
from tests.support.compose import (
    SERVER_LINE,
    TEMPLATE_SUFFIX,
    TEMPLATES_DIR,
    envsubst,
    load_compose,
    nginx_service,
    nginx_template,
    substituted_env,
    upstream_servers,
)
from tests.support.paths import ROOT

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PREFIX = "LOGBROKER_"
PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


# --- reading the files ---------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), comments dropped and continuation lines joined."""
    lines = [line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = "\n".join(lines).replace("\\\n", " ")
    steps = []
    for line in joined.splitlines():
        instruction, _, rest = line.strip().partition(" ")
        if instruction:
            steps.append((instruction.upper(), rest.strip()))
    return steps


def dockerfile_exec(instruction: str) -> list[str]:
    """The exec (JSON) form of ENTRYPOINT/CMD: the shell form would wrap logbroker in /bin/sh -c."""
    values = [rest for name, rest in dockerfile() if name == instruction]
    assert len(values) == 1, f"one {instruction} in the Dockerfile"
    parsed = json.loads(values[0])
    assert isinstance(parsed, list), f"{instruction} in exec form"
    return [str(part) for part in parsed]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for name, rest in dockerfile():
        if name == "ENV":
            for part in rest.split():
                key, _, value = part.partition("=")
                env[key] = value
    return env


def logbroker_services(compose: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose["services"].items() if "build" in s}


def service_env(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "environment as a mapping (the list form hides typos in names)"
    return {str(k): str(v) for k, v in env.items()}


def container_argv(service: Mapping[str, Any]) -> list[str]:
    """What the container runs: the service's entrypoint/command over the image's."""
    entrypoint = service.get("entrypoint", dockerfile_exec("ENTRYPOINT"))
    command = service.get("command", dockerfile_exec("CMD"))
    assert isinstance(entrypoint, list) and isinstance(command, list), "exec form, not a shell string"
    return [str(part) for part in [*entrypoint, *command]]


def parse_cli(argv: list[str]) -> argparse.Namespace:
    """The real ``logbroker`` parser; argparse's exit becomes a test failure naming the line."""
    try:
        return _parser().parse_args(argv)
    except SystemExit as e:
        raise AssertionError(f"`logbroker {' '.join(argv)}` is refused by the CLI parser") from e


def settings_for(service: Mapping[str, Any], monkeypatch: pytest.MonkeyPatch) -> GatewaySettings:
    """The settings the container's process would build: image ENV, then the service's
    environment, then the command-line flags (gateway.cli.command.settings_from), with nothing from
    this machine."""
    for name in [n for n in os.environ if n.startswith(PREFIX)]:
        monkeypatch.delenv(name)
    for name, value in {**dockerfile_env(), **service_env(service)}.items():
        if name.startswith(PREFIX):
            monkeypatch.setenv(name, value)
    return settings_from(parse_cli(container_argv(service)[1:]))


def healthcheck_url(service: Mapping[str, Any]) -> str:
    test = " ".join(str(part) for part in service["healthcheck"]["test"])
    found = re.findall(r"https?://[^\s'\"]+", test)
    assert len(found) == 1, f"one URL in the health check: {test}"
    return str(found[0])


def walk_strings(node: object) -> list[str]:
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in [str(k), *walk_strings(v)]]
    if isinstance(node, list):
        return [s for item in node for s in walk_strings(item)]
    return [str(node)]


# --- the checks --------------------------------------------------------------------------------


def test_the_services_and_their_health_checks() -> None:
    compose = load_compose()
    services = compose["services"]
    assert set(services) == {"redis", "gateway1", "gateway2", "nginx", "demo"}
    for name, service in services.items():
        test = service.get("healthcheck", {}).get("test")
        assert isinstance(test, list) and test[0] == "CMD" and len(test) > 1, f"{name}: health check"
    redis = services["redis"]
    assert str(redis["image"]).startswith("redis:7")
    assert redis["healthcheck"]["test"][1:] == ["redis-cli", "ping"]
    command = redis["command"]
    assert command[0] == "redis-server" and command[command.index("--appendonly") + 1] == "yes", "AOF on"
    volume, target = str(redis["volumes"][0]).split(":")[:2]
    assert target == "/data" and volume in compose["volumes"], "AOF on a named volume"


def test_start_order_waits_for_health() -> None:
    services = load_compose()["services"]
    gateways = [name for name, s in services.items() if s.get("command") == ["serve"]]
    assert gateways == ["gateway1", "gateway2"]
    for name in [*gateways, "demo"]:
        assert services[name]["depends_on"] == {"redis": {"condition": "service_healthy"}}, name
    assert services["nginx"]["depends_on"] == {g: {"condition": "service_healthy"} for g in gateways}


def test_every_logbroker_command_and_setting_is_accepted_by_the_code(monkeypatch: pytest.MonkeyPatch) -> None:
    compose = load_compose()
    fields = set(GatewaySettings.model_fields)
    services = logbroker_services(compose)
    assert set(services) == {"gateway1", "gateway2", "demo"}
    for name, service in services.items():
        argv = container_argv(service)
        assert argv[0] == "logbroker", f"{name} runs the logbroker console script"
        assert parse_cli(argv[1:]).command in {"serve", "demo"}, name
        image_vars = [var for var in dockerfile_env() if var.startswith(PREFIX)]
        for var in [*image_vars, *service_env(service)]:
            assert var.startswith(PREFIX), f"{name}: {var} is not a LOGBROKER_* setting"
            assert var[len(PREFIX) :].lower() in fields, f"{name}: {var} is not a GatewaySettings field"
        with monkeypatch.context() as patch:
            settings = settings_for(service, patch)
        url = urlsplit(settings.redis_url or "")
        assert (url.hostname, url.port or 6379) == ("redis", 6379), f"{name} uses the compose Redis"
        assert settings.host == "0.0.0.0", f"{name} listens beyond the container's loopback"


def test_ports_line_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """nginx's upstreams are the gateway services on their LOGBROKER_PORT, nginx listens on the
    published port, and every health check asks the port its service listens on."""
    compose = load_compose()
    services = compose["services"]
    ports: dict[str, int] = {}
    for name, service in logbroker_services(compose).items():
        with monkeypatch.context() as patch:
            ports[name] = settings_for(service, patch).port
        url = urlsplit(healthcheck_url(service))
        assert (url.hostname, url.port, url.path) == ("127.0.0.1", ports[name], "/readyz"), name
    gateways = {name: port for name, port in ports.items() if services[name]["command"] == ["serve"]}
    for name, port in gateways.items():
        assert str(port) in [str(p) for p in services[name]["expose"]], f"{name} exposes {port}"
    env = service_env(nginx_service(compose))
    assert sorted(upstream_servers(env["GATEWAY_UPSTREAMS"])) == sorted(
        f"{g}:{p}" for g, p in gateways.items()
    )
    for server in SERVER_LINE.finditer(env["GATEWAY_UPSTREAMS"]):
        assert "max_fails=" in server[2] and "fail_timeout=" in server[2], "failover parameters"
    published = [str(p).split(":") for p in services["nginx"]["ports"]]
    assert published == [["8080", env["LISTEN_PORT"]]], "host 8080 -> nginx's listen port"
    health = urlsplit(healthcheck_url(services["nginx"]))
    assert (health.hostname, str(health.port)) == ("127.0.0.1", env["LISTEN_PORT"])


def test_the_nginx_template_is_mounted_and_renders_completely() -> None:
    compose = load_compose()
    path, target = nginx_template(compose)
    assert path == ROOT / "deploy" / "nginx.conf" and path.is_file()
    env = service_env(nginx_service(compose))
    output = (
        env["NGINX_ENVSUBST_OUTPUT_DIR"].rstrip("/")
        + "/"
        + target[len(TEMPLATES_DIR) : -len(TEMPLATE_SUFFIX)]
    )
    assert output == "/etc/nginx/nginx.conf", "the template becomes the main config"
    text = path.read_text()
    substituted = substituted_env(env)
    assert set(PLACEHOLDER.findall(text)) == set(substituted) == {"LISTEN_PORT", "GATEWAY_UPSTREAMS"}
    for other in ("HOSTNAME", "HOME", "PATH", "NGINX_VERSION", "NGINX_ENVSUBST_OUTPUT_DIR"):
        assert other not in substituted_env({**env, other: "x"}), f"the filter keeps ${other} out"
    rendered = envsubst(text, substituted)
    assert "${" not in rendered and "server gateway1:8080 max_fails=" in rendered
    assert "$http_last_event_id" in rendered and "$upstream_addr" in rendered, "nginx variables untouched"


def test_the_nginx_template_matches_the_gateway() -> None:
    """The body limit is the gateway's ingest limit, and the stream's read timeout outlasts
    many heartbeats (a timeout below the heartbeat interval would cut every idle stream)."""
    text = (ROOT / "deploy" / "nginx.conf").read_text()
    defaults = GatewaySettings.model_fields
    size = re.search(r"client_max_body_size\s+(\d+)m;", text)
    assert size and int(size[1]) * 1024 * 1024 == defaults["max_body_bytes"].default
    stream = re.search(r"location ~ \^/v1/jobs/\[\^/\]\+/stream\$ \{(.*?)\}", text, re.S)
    assert stream, "a location for the SSE stream"
    body = stream[1]
    for directive in ("proxy_buffering off;", "proxy_cache off;", "gzip off;"):
        assert directive in body, directive
    read_timeout = re.search(r"proxy_read_timeout\s+(\d+)h;", body)
    assert read_timeout and int(read_timeout[1]) * 3600 >= 100 * defaults["heartbeat_s"].default
    for directive in (
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";',
        "proxy_next_upstream error timeout http_502 http_503;",
        "proxy_set_header Last-Event-ID $http_last_event_id;",
        "proxy_set_header Authorization $http_authorization;",
        "keepalive ",
    ):
        assert directive in text, directive
    assert not re.search(r"^\s*proxy_ignore_headers", text, re.M), (
        "X-Accel-Buffering from the gateway is honoured"
    )
    assert "text/event-stream" not in re.search(r"gzip_types([^;]*);", text)[1]  # type: ignore[index]


def test_no_value_is_mangled_by_compose_interpolation() -> None:
    """Compose expands ``$NAME`` in values itself; a literal dollar must be written ``$$``."""
    for value in walk_strings(load_compose()):
        assert not re.search(r"(?<!\$)\$(?!\$)", value.replace("$$", "")), value


def test_the_image_runs_the_declared_console_script() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    scripts = project["scripts"]
    assert dockerfile_exec("ENTRYPOINT") == ["logbroker"] and "logbroker" in scripts
    module, _, function = scripts["logbroker"].partition(":")
    assert (module, function) == ("gateway.cli", "main")
    assert callable(getattr(importlib.import_module(module), function)), "the console script resolves"
    assert parse_cli(dockerfile_exec("CMD")).command == "serve"
    steps = dockerfile()
    base = next(rest for name, rest in steps if name == "FROM")
    assert base == "python:3.11-slim"
    assert project["requires-python"] == ">=3.11"
    installs = [
        m[1] for name, rest in steps if name == "RUN" and (m := re.search(r"pip install '\.\[(.+?)\]'", rest))
    ]
    assert len(installs) == 1 and "gateway" in installs[0].split(","), "the image installs the gateway extra"
    copied = {src for name, rest in steps if name == "COPY" for src in rest.split()[:-1]}
    found = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = {name.split(".")[0] for name in found["include"]}  # broker, gateway and their sub-packages
    needed = {"pyproject.toml", project["readme"], *project["license-files"], *packages}
    assert needed <= copied, "what pip install . needs"
    ignored = {line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip()}
    assert not ignored & copied, ".dockerignore keeps out nothing the build copies"
