"""Write-time validation of entries (broker/entry.py): every rule refuses with the right field."""

from __future__ import annotations

import math
import re
from types import MappingProxyType

import pytest

from broker.constants import MAX_FIELDS_DEPTH, MAX_NAME_LEN, MAX_STATUS_LEN
from broker.entry import (
    check_fields,
    check_identity,
    check_job_id,
    check_name,
    check_status,
    clip_message,
    end_line,
    kind_number,
    level_number,
    status_line,
)
from broker.errors import InvalidEntry

_MARKER_RE = re.compile(r" …\[truncated: (\d+) bytes, limit (\d+)\]$")


# ---- job id ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "job",
    ["a", "mgr-42", "x" * 128, "a.b", "a:b", "a-b", "a_b", "...", ":", "-", "_", "Job.1:step-2_x"],
)
def test_valid_job_ids_are_returned_unchanged(job: str) -> None:
    assert check_job_id(job) == job


@pytest.mark.parametrize(
    "job",
    [
        "",
        "x" * 129,
        "a b",
        "a/b",
        "a{b",
        "a}b",
        "job\n",
        "\njob",
        "a\tb",
        "a\x00b",
        "jöb",
        "日本",
        "٣",  # a non-ASCII digit
        "a*b",
        None,
        123,
        b"job",
        ["job"],
    ],
)
def test_invalid_job_ids_are_refused(job: object) -> None:
    with pytest.raises(InvalidEntry) as info:
        check_job_id(job)
    assert info.value.field == "job"
    assert "[A-Za-z0-9._:-]{1,128}" in str(info.value)
    assert isinstance(info.value, ValueError)


# ---- names ----------------------------------------------------------------------------------

NAME_FIELDS = ["step", "worker", "parent", "job_name", "job_type"]


@pytest.mark.parametrize("field", NAME_FIELDS)
@pytest.mark.parametrize(
    "value",
    ["x", "high_volume_generator", "Test Job Generator", "n" * MAX_NAME_LEN, "日本語の名前", "a/b{c}"],
)
def test_valid_names_are_returned_unchanged(field: str, value: str) -> None:
    assert check_name(field, value) == value


@pytest.mark.parametrize("field", NAME_FIELDS)
def test_none_name_means_not_set(field: str) -> None:
    assert check_name(field, None) is None


@pytest.mark.parametrize("field", NAME_FIELDS)
@pytest.mark.parametrize(
    ("value", "hint"),
    [
        ("", "empty"),
        ("n" * (MAX_NAME_LEN + 1), str(MAX_NAME_LEN)),
        ("a\nb", "control"),
        ("a\rb", "control"),
        ("a\tb", "control"),
        ("a\x00b", "control"),
        ("a\x7fb", "control"),
        ("\x1b[31mred", "control"),
        ("trailing\n", "control"),
        (123, "string"),
        (b"bytes", "string"),
        (True, "string"),
        (["a"], "string"),
    ],
)
def test_invalid_names_are_refused(field: str, value: object, hint: str) -> None:
    with pytest.raises(InvalidEntry) as info:
        check_name(field, value)
    assert info.value.field == field
    assert hint in info.value.message
    assert str(info.value).startswith(f"{field}: ")


def test_name_limit_is_exactly_max_name_len() -> None:
    assert MAX_NAME_LEN == 256
    assert check_name("step", "s" * 256) == "s" * 256
    with pytest.raises(InvalidEntry, match="257 characters"):
        check_name("step", "s" * 257)


def test_a_name_accepted_once_is_still_checked_for_another_bad_value() -> None:
    # Names are cached once validated; a bad value must never slip through that cache.
    assert check_name("step", "cached-step") == "cached-step"
    assert check_name("worker", "cached-step") == "cached-step"
    with pytest.raises(InvalidEntry):
        check_name("worker", "cached-step\n")


@pytest.mark.parametrize(
    ("step", "worker", "parent", "field"),
    [
        ("ok", "bad\nworker", None, "worker"),
        ("bad\tstep", "w-1", None, "step"),
        ("ok", "w-1", "", "parent"),
        ("ok", "w-1", "p" * 257, "parent"),
        ("", None, None, "step"),
        (None, 17, None, "worker"),
    ],
)
def test_identity_names_the_bad_field(step: object, worker: object, parent: object, field: str) -> None:
    with pytest.raises(InvalidEntry) as info:
        check_identity(step, worker, parent)
    assert info.value.field == field


def test_worker_without_step_is_refused() -> None:
    with pytest.raises(InvalidEntry) as info:
        check_identity(None, "w-17", None)
    assert info.value.field == "step"
    assert "w-17" in info.value.message
    assert "step" in info.value.message


@pytest.mark.parametrize(
    ("step", "worker", "parent"),
    [
        (None, None, None),
        ("s", None, None),
        ("s", "w", None),
        ("s", "w", "p"),
        (None, None, "p"),
    ],
)
def test_valid_identities_are_returned(step: str | None, worker: str | None, parent: str | None) -> None:
    assert check_identity(step, worker, parent) == (step, worker, parent)


# ---- status, level, kind ---------------------------------------------------------------------


@pytest.mark.parametrize("status", ["running", "completed", "FAILED", "a", "s" * MAX_STATUS_LEN, "v1.2_x-y"])
def test_valid_status(status: str) -> None:
    assert check_status(status) == status


@pytest.mark.parametrize(
    "status", ["", "s" * (MAX_STATUS_LEN + 1), "not running", "running\n", "a/b", "done!", "läuft", None, 1]
)
def test_invalid_status_is_refused(status: object) -> None:
    with pytest.raises(InvalidEntry) as info:
        check_status(status)
    assert info.value.field == "status"
    assert "[A-Za-z0-9_.-]{1,64}" in info.value.message


@pytest.mark.parametrize(
    ("level", "number"),
    [
        ("debug", 10),
        ("info", 20),
        ("INFO", 20),
        ("Warning", 30),
        ("error", 40),
        ("CRITICAL", 50),
        (10, 10),
        (20, 20),
        (25, 20),
        (39, 30),
        (5, 10),
        (0, 10),
        (50, 50),
        (100, 50),
    ],
)
def test_levels(level: object, number: int) -> None:
    assert level_number(level) == number


@pytest.mark.parametrize(
    "level", ["verbose", "", "trace", " info", "inf", -1, -20, True, False, 20.0, None, b"info"]
)
def test_invalid_levels_are_refused(level: object) -> None:
    with pytest.raises(InvalidEntry) as info:
        level_number(level)
    assert info.value.field == "level"


@pytest.mark.parametrize(("kind", "number"), [("log", 0), ("status", 1), ("end", 2)])
def test_kinds(kind: str, number: int) -> None:
    assert kind_number(kind) == number


@pytest.mark.parametrize("kind", ["", "LOG", "event", "gap", 0, None])
def test_invalid_kinds_are_refused(kind: object) -> None:
    with pytest.raises(InvalidEntry) as info:
        kind_number(kind)
    assert info.value.field == "kind"
    assert "log, status, end" in info.value.message


# ---- fields ---------------------------------------------------------------------------------


def _nested(levels: int) -> dict[str, object]:
    """``levels`` dicts inside each other, the innermost holding one scalar."""
    value: object = 1
    for _ in range(levels):
        value = {"a": value}
    assert isinstance(value, dict)
    return value


def test_fields_none_means_no_fields() -> None:
    assert check_fields(None) is None


def test_valid_fields_are_kept() -> None:
    fields = {
        "item": 12,
        "ratio": 0.5,
        "ok": True,
        "none": None,
        "name": "x",
        "list": [1, "a", None, {"k": [2.5]}],
        "big": 2**63 - 1,
        "small": -(2**63),
    }
    assert check_fields(fields) == fields


def test_tuples_become_lists() -> None:
    assert check_fields({"t": (1, (2, 3)), "l": [(4,)]}) == {"t": [1, [2, 3]], "l": [[4]]}


def test_any_mapping_is_accepted_as_a_dict() -> None:
    clean = check_fields(MappingProxyType({"a": 1}))
    assert clean == {"a": 1}
    assert type(clean) is dict


def test_fields_nesting_limit() -> None:
    assert check_fields(_nested(MAX_FIELDS_DEPTH)) == _nested(MAX_FIELDS_DEPTH)
    with pytest.raises(InvalidEntry) as info:
        check_fields(_nested(MAX_FIELDS_DEPTH + 1))
    assert info.value.field.startswith("fields")
    assert str(MAX_FIELDS_DEPTH) in info.value.message


def test_deeply_nested_lists_are_refused_too() -> None:
    value: object = 1
    for _ in range(MAX_FIELDS_DEPTH + 5):
        value = [value]
    with pytest.raises(InvalidEntry) as info:
        check_fields({"deep": value})
    assert info.value.field.startswith("fields.deep")


@pytest.mark.parametrize("fields", [[1, 2], "a=1", 12, ("a", 1), b"{}"])
def test_fields_must_be_a_dict(fields: object) -> None:
    with pytest.raises(InvalidEntry) as info:
        check_fields(fields)
    assert info.value.field == "fields"
    assert "object" in info.value.message


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({1: "a"}, "fields"),
        ({None: "a"}, "fields"),
        ({("a",): 1}, "fields"),
        ({"x": {2: "a"}}, "fields.x"),
        ({"x": math.nan}, "fields.x"),
        ({"x": math.inf}, "fields.x"),
        ({"x": -math.inf}, "fields.x"),
        ({"x": [1, math.nan]}, "fields.x[1]"),
        ({"x": 2**64}, "fields.x"),
        ({"x": -(2**63) - 1}, "fields.x"),
        ({"x": 10**30}, "fields.x"),
        ({"x": {1, 2}}, "fields.x"),
        ({"x": frozenset()}, "fields.x"),
        ({"x": b"raw"}, "fields.x"),
        ({"x": bytearray(b"raw")}, "fields.x"),
        ({"x": object()}, "fields.x"),
        ({"x": 1j}, "fields.x"),
        ({"x": {"y": [{"z": {1}}]}}, "fields.x.y[0].z"),
    ],
)
def test_invalid_fields_are_refused_with_their_path(fields: dict[object, object], path: str) -> None:
    with pytest.raises(InvalidEntry) as info:
        check_fields(fields)
    assert info.value.field == path


# ---- clip_message ---------------------------------------------------------------------------


def _check_clipped(original: str, clipped: str, limit: int) -> str:
    """Common promises of a clipped message; returns the kept prefix."""
    raw_size = len(original.encode("utf-8"))
    size = len(clipped.encode("utf-8"))  # strict: the cut never leaves half a character
    assert size <= limit
    match = _MARKER_RE.search(clipped)
    assert match is not None, clipped[-80:]
    assert (int(match.group(1)), int(match.group(2))) == (raw_size, limit)
    kept = clipped[: match.start()]
    assert original.startswith(kept)
    assert "\ufffd" not in kept
    return kept


@pytest.mark.parametrize(
    "msg", ["", "short", "é" * 100, "😀" * 64, "x" * 256, "x" * 252 + "😀", "line1\nline2\r\n"]
)
def test_messages_within_the_limit_are_untouched(msg: str) -> None:
    assert len(msg.encode()) <= 256
    assert clip_message(msg, 256) == msg


def test_message_over_the_limit_is_clipped_and_says_so() -> None:
    msg = "x" * 1000
    clipped = clip_message(msg, 256)
    kept = _check_clipped(msg, clipped, 256)
    assert len(kept) > 150  # most of the budget is kept
    assert "1000 bytes" in clipped
    assert "limit 256" in clipped


def test_one_byte_over_the_limit_is_clipped() -> None:
    msg = "x" * 257
    _check_clipped(msg, clip_message(msg, 256), 256)


@pytest.mark.parametrize("shift", [0, 1, 2, 3, 4])
def test_clip_cuts_at_a_character_boundary(shift: int) -> None:
    limit = 256
    probe = clip_message("x" * 5000, limit)
    keep = limit - len(probe[probe.index(" …[") :].encode())
    # 4-byte emojis from ``keep - shift`` onwards: the byte cut lands inside one for shift 1..3.
    msg = "x" * (keep - shift) + "😀" * 1500
    clipped = clip_message(msg, limit)
    kept = _check_clipped(msg, clipped, limit)
    whole_emojis = shift // 4
    assert kept == "x" * (keep - shift) + "😀" * whole_emojis


@pytest.mark.parametrize("limit", [256, 1000, 65536])
@pytest.mark.parametrize("char", ["a", "é", "€", "😀"])
def test_clipped_size_never_exceeds_the_limit(limit: int, char: str) -> None:
    for extra in range(1, 9):
        msg = "a" * extra + char * (limit // len(char.encode()) + 1)
        clipped = clip_message(msg, limit)
        _check_clipped(msg, clipped, limit)


def test_bytes_with_invalid_utf8_become_replacement_characters() -> None:
    assert clip_message(b"ok \xff\xfe end", 256) == "ok \ufffd\ufffd end"
    assert clip_message(bytearray(b"\xc3("), 256) == "\ufffd("
    assert clip_message(memoryview(b"caf\xc3\xa9"), 256) == "café"


def test_oversized_bytes_are_clipped_too() -> None:
    raw = b"\xff" * 300
    clipped = clip_message(raw, 256)
    assert len(clipped.encode()) <= 256
    assert clipped.startswith("\ufffd")
    assert _MARKER_RE.search(clipped) is not None


@pytest.mark.parametrize("msg", [None, 12, 1.5, ["a"], {"msg": "x"}])
def test_non_text_messages_are_refused(msg: object) -> None:
    with pytest.raises(InvalidEntry) as info:
        clip_message(msg, 256)
    assert info.value.field == "msg"


# ---- status and end lines -------------------------------------------------------------------


def test_status_line_matches_the_design_example() -> None:
    line = status_line("running", "mgr-42", "Test Job Generator", "manager", "high_volume_generator", "w-17")
    assert line == (
        'Status changed: running (job: mgr-42 "Test Job Generator", type: manager, '
        "step: high_volume_generator, worker: w-17)"
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((None, None, None, None), "Status changed: failed (job: j-1)"),
        (("Gen", None, None, None), 'Status changed: failed (job: j-1 "Gen")'),
        ((None, "manager", "s1", None), "Status changed: failed (job: j-1, type: manager, step: s1)"),
        (("Gen", None, "s1", "w-2"), 'Status changed: failed (job: j-1 "Gen", step: s1, worker: w-2)'),
    ],
)
def test_status_line_names_only_what_is_set(args: tuple[str | None, ...], expected: str) -> None:
    assert status_line("failed", "j-1", *args) == expected


def test_end_line_names_the_job() -> None:
    assert end_line("completed", "mgr-42", "Test Job Generator", "manager") == (
        'Job finished: completed (job: mgr-42 "Test Job Generator", type: manager)'
    )


@pytest.mark.parametrize("ts_ms", [253_402_300_800_000, -62_135_596_800_001, 1.5, "now", True])
def test_timestamps_outside_years_1_to_9999_are_refused(ts_ms: object) -> None:
    from broker.entry import make_draft

    with pytest.raises(InvalidEntry) as info:
        make_draft("j", "m", level=20, kind=0, ts_ms=ts_ms, max_message_bytes=65536)  # type: ignore[arg-type]
    assert info.value.field == "ts"
