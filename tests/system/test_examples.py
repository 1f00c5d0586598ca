"""The README's example is a real file; it must run and print the whole job, in order."""

from __future__ import annotations

import subprocess
import sys

from tests.support.paths import ROOT


def test_publish_and_follow_example_prints_every_line() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "publish_and_follow.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.splitlines()
    assert [line.split()[0] for line in out] == ["1", "2", "3", "4", "5", "1"]
    assert "Status changed: running (job: demo-1" in out[0] and "worker: w-1" in out[0]
    assert out[-1].endswith('Job finished: completed (job: demo-1 "Quick start", type: manager)')
