"""``broker.client`` is the consumer's install: it must not need the gateway or its server
stack (aiohttp, orjson), whatever ``import broker`` itself loads."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.paths import ROOT

PROBE = """
import json, sys

class Refuse:  # as if the gateway extra were not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("aiohttp", "gateway", "uvloop", "pydantic_settings", "jwt"):
            raise ImportError(f"not installed: {name}")

sys.meta_path.insert(0, Refuse())
import broker
before = set(sys.modules)
import broker.client
print(json.dumps(sorted({m.split(".")[0] for m in set(sys.modules) - before})))
"""


def test_broker_client_imports_without_the_gateway_and_its_server_stack() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout))
    assert {"httpx", "httpx_sse"} <= loaded
    assert not loaded & {"orjson", "aiohttp", "gateway"}, loaded
