"""The write script spells the stream and meta field names that ``broker.constants`` names.

Lua cannot import the constants, so this is what keeps the two homes of each name from drifting:
every ``META_*``/``STREAM_FIELD_*`` value appears as a quoted literal in the script, and every
literal the script uses as a meta field is one of them.
"""

from __future__ import annotations

import re
from pathlib import Path

import broker
from broker import constants
from broker.meta import parse_meta

LUA = (Path(broker.__file__).parent / "lua" / "write_batch.lua").read_text()
META_NAMES = {
    name: value for name, value in vars(constants).items() if name.startswith("META_") and name != "META_SEP"
}
STREAM_FIELDS = {
    name: value.decode() for name, value in vars(constants).items() if name.startswith("STREAM_FIELD_")
}


def lua_literals() -> set[str]:
    return set(re.findall(r"'([^'\n]*)'", LUA))


def test_every_meta_and_stream_field_name_is_spelled_in_the_write_script() -> None:
    literals = lua_literals()
    missing = {
        name: value for name, value in {**META_NAMES, **STREAM_FIELDS}.items() if value not in literals
    }
    assert not missing, f"the write script does not use {missing}"


def test_the_write_scripts_meta_fields_are_all_named_in_constants() -> None:
    """The script's ``sets[...]``/``firsts[...]`` fields and the tags and suffixes it joins."""
    assigned = set(re.findall(r"(?:sets|firsts)\['([^']+)'\]", LUA))
    joined = set(re.findall(r"'([a-z]+)' \.\. SEP", LUA)) | set(re.findall(r"p \.\. '([a-z]+)'", LUA))
    tallies = set(re.findall(r"tally\('([a-z]+)'\)", LUA)) | set(re.findall(r"line_f = '([a-z]+)'", LUA))
    unknown = (assigned | joined | tallies) - set(META_NAMES.values())
    assert assigned and joined and tallies, "the patterns above no longer find the script's fields"
    assert not unknown, f"the write script uses meta fields that broker.constants does not name: {unknown}"


def test_parse_meta_reads_each_named_field() -> None:
    sep = constants.META_SEP
    raw = {
        constants.META_ENTRIES: "7",
        constants.META_JOB_ENTRIES: "1",
        constants.META_STATUS: "completed",
        constants.META_FIRST_ID: "1-0",
        constants.META_END_ID: "9-0",
        constants.META_CREATED_MS: "5",
        sep.join((constants.META_STEP, "build", constants.META_COUNT)): "6",
        sep.join((constants.META_STEP, "build", constants.META_FIRST)): "2-0",
        sep.join((constants.META_WORKER, "build", "w1", constants.META_COUNT)): "6",
        sep.join((constants.META_PUBLISHER, "src-a", constants.META_SEQ)): "7",
    }
    meta = parse_meta("j", raw)
    assert meta is not None
    assert (meta.entries, meta.job_entries, meta.status, meta.first_id, meta.end_id, meta.created_ms) == (
        7, 1, "completed", "1-0", "9-0", 5,
    )  # fmt: skip
    assert meta.steps["build"].entries == 6 and meta.steps["build"].first_id == "2-0"
    assert meta.steps["build"].workers["w1"].entries == 6
    assert meta.publishers["src-a"].last_seq == 7
