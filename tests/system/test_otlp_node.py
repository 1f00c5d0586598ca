"""The OpenTelemetry Node SDK (``@opentelemetry/sdk-logs`` + ``@opentelemetry/exporter-logs-otlp-http``,
which sends OTLP/JSON) exporting to a gateway's ``POST /v1/logs``: a non-Python worker needs no
logbroker code at all. The npm packages are installed once into a cache outside the repository
(``LOGBROKER_NODE_CACHE``, default ``~/.cache/logbroker-tests/otel-node``); skipped only where
node or npm is missing."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import redis

from tests.support.fixture_types import Client
from tests.support.helpers import read_job

PACKAGES = {
    "@opentelemetry/sdk-logs": "^0.223.1",
    "@opentelemetry/exporter-logs-otlp-http": "^0.223.1",
    "@opentelemetry/api-logs": "^0.223.1",
    "@opentelemetry/resources": "^2.12.1",
}
WORKER = r"""
const { LoggerProvider, BatchLogRecordProcessor } = require('@opentelemetry/sdk-logs');
const { OTLPLogExporter } = require('@opentelemetry/exporter-logs-otlp-http');
const { resourceFromAttributes } = require('@opentelemetry/resources');
const { SeverityNumber } = require('@opentelemetry/api-logs');

const resource = resourceFromAttributes({
  'cicd.pipeline.run.id': 'node-1', 'cicd.pipeline.name': 'Node build',
  'cicd.pipeline.task.name': 'bundle', 'cicd.worker.id': 'node-w1', 'service.name': 'node-worker',
});
const exporter = new OTLPLogExporter({ url: process.argv[2] });
const provider = new LoggerProvider({ resource, processors: [new BatchLogRecordProcessor({ exporter })] });
const logger = provider.getLogger('node-test');
logger.emit({ severityNumber: SeverityNumber.DEBUG, body: 'resolving' });
logger.emit({ severityNumber: SeverityNumber.INFO, body: 'bundling',
              attributes: { files: 3, ratio: 0.25, ok: true, tags: ['x', 'y'] } });
logger.emit({ severityNumber: SeverityNumber.WARN, body: 'slow' });
logger.emit({ severityNumber: SeverityNumber.ERROR, body: { event: 'failed', code: 2 },
              attributes: { 'cicd.pipeline.task.name': 'test' } });
logger.emit({ severityNumber: SeverityNumber.FATAL, body: 'gave up',
              attributes: { 'logbroker.src': 'node-w1', 'logbroker.seq': 1 } });
provider.forceFlush().then(() => provider.shutdown()).then(
  () => process.exit(0), (e) => { console.error(e); process.exit(1); });
"""

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None,
    reason="node and npm are needed (not on PATH)",
)


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """The packages, installed once (an install that fails is a failure, not a skip)."""
    default = Path.home() / ".cache" / "logbroker-tests" / "otel-node"
    folder = Path(os.environ.get("LOGBROKER_NODE_CACHE", default))
    modules = folder / "node_modules"
    if not all((modules / name / "package.json").exists() for name in PACKAGES):
        folder.mkdir(parents=True, exist_ok=True)
        manifest = {"name": "logbroker-otel-node-tests", "private": True, "dependencies": PACKAGES}
        (folder / "package.json").write_text(json.dumps(manifest))
        done = subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=folder, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, f"npm install failed in {folder}: {done.stderr[-2000:]}"
    return modules


async def test_node_sdk_records_arrive_with_job_step_worker_level_and_fields(
    api: Client, redis_client: redis.Redis, node_modules: Path, tmp_path: Path
) -> None:
    script = tmp_path / "worker.js"
    script.write_text(WORKER)
    node = await asyncio.create_subprocess_exec(
        "node", str(script), str(api.make_url("/v1/logs")),
        env={**os.environ, "NODE_PATH": str(node_modules)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(node.communicate(), 60)
    assert node.returncode == 0, (out + err).decode()[-2000:]

    entries = read_job(redis_client, "node-1")
    assert [e["msg"] for e in entries] == [
        "resolving",
        "bundling",
        "slow",
        '{"event":"failed","code":2}',
        "gave up",
    ]
    assert [e["level"] for e in entries] == ["debug", "info", "warning", "error", "critical"]
    assert [e["step"] for e in entries] == ["bundle", "bundle", "bundle", "test", "bundle"]
    assert {(e["job_name"], e["worker"]) for e in entries} == {("Node build", "node-w1")}
    fields = entries[1]["fields"] or {}
    assert (fields["files"], fields["ratio"], fields["ok"], fields["tags"]) == (3, 0.25, True, ["x", "y"])
    assert fields["resource"]["service.name"] == "node-worker"
    assert (entries[4]["src"], entries[4]["seq"]) == ("node-w1", 1)
    assert all(e["ts"] > "2026" for e in entries)
