"""Where the repository is, for tests that run its files (scripts, compose, the package)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
