"""The JSON line the gateway sends for an entry (gateway/entry_json.py); decoding and the
tricky messages' round trip through it are in tests/broker/test_codec.py."""

from __future__ import annotations

import json
from typing import Any

from gateway.entry_json import entry_json, entry_json_bytes


def test_entry_json_is_compact_json_dumps_output_and_falls_back_where_orjson_refuses() -> None:
    """orjson is an optimisation: for every value an entry can hold the JSON has json.dumps'
    compact, non-ASCII values; what orjson refuses goes through json.dumps instead of failing."""
    entry: Any = {
        "id": "1-0",
        "msg": 'é 🎉 \u2028 \x00\x1f\x7f \n\r\t\b\f "quoted" \\ back',
        "fields": {"n": 2**63, "neg": -(2**63), "f": 0.1, "big": 1.5e300, "l": [True, None, {}]},
    }
    expected = json.dumps(entry, ensure_ascii=False, separators=(",", ":"))
    assert json.loads(entry_json_bytes(entry)) == json.loads(expected)
    assert entry_json(entry) == entry_json_bytes(entry).decode()
    huge: Any = {"id": "1-0", "fields": {"n": 2**70}, "s": "\ud800"}  # beyond 64 bits; a lone surrogate
    assert entry_json(huge) == json.dumps(huge, separators=(",", ":"))


def test_line_separators_go_out_escaped() -> None:
    entry: Any = {"id": "1-0", "msg": "a\u2028b\u2029c\u0085d", "fields": {"k\u2028": "\u0085"}}
    line = entry_json(entry)
    assert line.splitlines() == [line]
    assert "\\u2028" in line and "\\u2029" in line and "\\u0085" in line
    assert json.loads(line) == entry
