"""Entries to stored bytes and back (broker/codec.py) and to the JSON the gateway sends, without Redis."""

from __future__ import annotations

import json
import re
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.codec import (
    LinePacker,
    decode_entry,
    iso_to_ms,
    ms_to_iso,
    pack_batch,
    pack_body,
    pack_control,
    pack_item,
    unpack_body,
    unpack_totals,
)
from broker.constants import KIND_END, KIND_LOG, KIND_STATUS, LEVELS, MAX_FIELDS_BYTES
from broker.entry import Draft, check_fields
from broker.errors import CodecError, InvalidEntry
from gateway.entry_json import entry_json

ENTRY_KEYS = {
    "id", "job", "job_name", "job_type", "step", "worker", "parent", "line",
    "level", "kind", "status", "msg", "ts", "src", "seq", "fields",
}  # fmt: skip
DESIGN_TS_MS = 1795878000123  # 2026-11-28T15:00:00.123Z
ISO_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")


def body(
    msg: str = "m",
    *,
    ts_ms: int = DESIGN_TS_MS,
    level: int = LEVELS["info"],
    kind: int = KIND_LOG,
    step: str | None = None,
    worker: str | None = None,
    parent: str | None = None,
    status: str | None = None,
    job_name: str | None = None,
    job_type: str | None = None,
    src: str | None = None,
    seq: int | None = None,
    fields: dict[str, Any] | None = None,
) -> bytes:
    return pack_body(
        ts_ms, level, kind, msg, step, worker, parent, status, job_name, job_type, src, seq, fields
    )


def decode(raw: bytes, line: int = 1, job: str = "job-1", entry_id: str = "1-0") -> dict[str, Any]:
    entry = decode_entry(job, entry_id, {b"l": str(line).encode(), b"b": raw})
    return dict(entry)


def test_design_example_round_trips_exactly() -> None:
    raw = body(
        "processed item 12", step="high_volume_generator", worker="w-17", parent="step-3",
        job_name="Test Job Generator", job_type="manager", src="host-a:4711", seq=42, fields={"item": 12},
    )  # fmt: skip
    entry = decode_entry("mgr-42", "1764345600123-0", {b"l": b"1234", b"b": raw})
    assert entry == {
        "id": "1764345600123-0",
        "job": "mgr-42", "job_name": "Test Job Generator", "job_type": "manager",
        "step": "high_volume_generator",
        "worker": "w-17", "parent": "step-3",
        "line": 1234,
        "level": "info",
        "kind": "log", "status": None,
        "msg": "processed item 12",
        "ts": "2026-11-28T15:00:00.123Z",
        "src": "host-a:4711", "seq": 42,
        "fields": {"item": 12},
    }  # fmt: skip
    assert json.loads(entry_json(entry)) == entry


def test_every_key_is_present_and_unset_ones_are_none() -> None:
    entry = decode(body("hello"), line=7)
    assert set(entry) == ENTRY_KEYS
    assert type(entry["line"]) is int
    assert entry["line"] == 7
    for key in ("job_name", "job_type", "step", "worker", "parent", "status", "src", "seq", "fields"):
        assert entry[key] is None, key
    as_json = json.loads(entry_json(decode_entry("job-1", "1-0", {b"l": b"7", b"b": body("hello")})))
    assert set(as_json) == ENTRY_KEYS
    assert as_json["step"] is None


@pytest.mark.parametrize(("name", "number"), list(LEVELS.items()))
def test_level_names(name: str, number: int) -> None:
    assert decode(body(level=number))["level"] == name


@pytest.mark.parametrize(("name", "number"), [("log", KIND_LOG), ("status", KIND_STATUS), ("end", KIND_END)])
def test_kind_names(name: str, number: int) -> None:
    assert decode(body(kind=number, status="running" if number else None))["kind"] == name


def test_end_entry_carries_its_totals_in_fields() -> None:
    totals = {"entries": 3, "steps": [], "workers": {"s1": []}, "publishers": {"p": {"n": 3, "seq": 3}}}
    raw = body("done", kind=KIND_END, status="completed", fields={"note": 1})
    entry = decode_entry("j", "5-0", {b"l": b"3", b"b": raw, b"t": msgpack.packb(totals)})
    assert entry["kind"] == "end"
    assert entry["fields"] == {
        "note": 1,
        "totals": {"entries": 3, "steps": {}, "workers": {"s1": {}}, "publishers": {"p": {"n": 3, "seq": 3}}},
    }


@pytest.mark.parametrize("raw", [b"\xc1", b"not msgpack", msgpack.packb([1, 2]), msgpack.packb(["a"])[:-1]])
def test_corrupted_totals_raise_codec_error(raw: bytes) -> None:
    with pytest.raises(CodecError):
        unpack_totals(raw)


# ---- messages that must survive storage and SSE ---------------------------------------------

TRICKY_MESSAGES = [
    "a\nb",
    "a\rb",
    "a\r\nb",
    "nul\x00inside",
    "emoji 😀 and 日本語",
    "data: x\n\nid: 9",
    "event: end\ndata: {}\n\n",
    "\u2028\u2029 separators",
    "tab\tand \x1b[31mescape",
    "",
    '"quoted" \\ backslash',
]


@pytest.mark.parametrize("msg", TRICKY_MESSAGES)
def test_tricky_messages_round_trip_and_json_is_one_line(msg: str) -> None:
    entry = decode_entry("job-1", "9-0", {b"l": b"1", b"b": body(msg, step="s", fields={"k": msg})})
    assert entry["msg"] == msg
    assert entry["fields"] == {"k": msg}
    line = entry_json(entry)
    assert "\n" not in line
    assert "\r" not in line
    assert json.loads(line) == entry


def test_lone_surrogate_becomes_replacement_character() -> None:
    entry = decode_entry(
        "job-1", "1-0",
        {b"l": b"1", b"b": body("bad \udcff name", step="st\udcffep", fields={"k\udcff": "v\udcff"})},
    )  # fmt: skip
    for text in (entry["msg"], entry["step"], *entry["fields"], *entry["fields"].values()):
        assert "\ufffd" in text
        assert not any("\ud800" <= c <= "\udfff" for c in text)
    assert entry["msg"].startswith("bad ")
    assert entry["msg"].endswith(" name")
    line = entry_json(entry)
    line.encode("utf-8")  # strict: no surrogate left to crash a writer
    assert json.loads(line) == entry


def test_one_lone_surrogate_becomes_one_replacement_character() -> None:
    assert decode(body("bad \udcff name"))["msg"] == "bad \ufffd name"


# ---- timestamps -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ts_ms", "iso"),
    [
        (0, "1970-01-01T00:00:00.000Z"),
        (1, "1970-01-01T00:00:00.001Z"),
        (999, "1970-01-01T00:00:00.999Z"),
        (DESIGN_TS_MS, "2026-11-28T15:00:00.123Z"),
        (1764345600123, "2025-11-28T16:00:00.123Z"),
        (253402300799999, "9999-12-31T23:59:59.999Z"),
    ],
)
def test_ms_to_iso_and_back(ts_ms: int, iso: str) -> None:
    assert ms_to_iso(ts_ms) == iso
    assert ISO_RE.fullmatch(iso)
    assert iso_to_ms(iso) == ts_ms
    assert decode(body(ts_ms=ts_ms))["ts"] == iso


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-28T15:00:00.123Z",
        "2026-11-28T15:00:00.123z",
        "2026-11-28T15:00:00.123",
        "2026-11-28T15:00:00.123+00:00",
        "2026-11-28T17:00:00.123+02:00",
        "2026-11-28T10:00:00.123-05:00",
    ],
)
def test_iso_to_ms_zones(text: str) -> None:
    assert iso_to_ms(text) == DESIGN_TS_MS


@pytest.mark.parametrize(
    "text", ["", "yesterday", "2026-13-01T00:00:00Z", "2026-11-28T25:00:00Z", "12:00", None, 5]
)
def test_iso_garbage_is_refused(text: object) -> None:
    with pytest.raises(InvalidEntry) as info:
        iso_to_ms(text)  # type: ignore[arg-type]
    assert info.value.field == "ts"


def test_iso_to_ms_is_exact_for_every_millisecond() -> None:
    assert iso_to_ms("2004-02-20T21:51:38.376Z") == 1077313898376
    start = 1077313898000
    wrong = [ms for ms in range(start, start + 1000) if iso_to_ms(ms_to_iso(ms)) != ms]
    assert wrong == []


# ---- corrupted data -------------------------------------------------------------------------

GOOD = body("good", step="s", src="p", seq=1, fields={"a": 1})
_GOOD_LIST = msgpack.unpackb(GOOD, raw=False)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xc1",
        b"not msgpack at all",
        b"\xff\xfe\xfd",
        GOOD[:-1],
        GOOD[: len(GOOD) // 2],
        GOOD[:1],
        GOOD + b"\x00",
        msgpack.packb([2, *_GOOD_LIST[1:]]),
        msgpack.packb([0, *_GOOD_LIST[1:]]),
        msgpack.packb(_GOOD_LIST[:13]),
        msgpack.packb([]),
        msgpack.packb({"v": 1}),
        msgpack.packb(1),
        msgpack.packb("text"),
        msgpack.packb(None),
    ],
    ids=lambda raw: raw[:12].hex() or "empty",
)
def test_corrupted_bodies_raise_codec_error(raw: bytes) -> None:
    with pytest.raises(CodecError):
        decode_entry("job-1", "1-0", {b"l": b"1", b"b": raw})
    with pytest.raises(CodecError):
        unpack_body(raw)


@pytest.mark.parametrize(
    "stream_fields",
    [
        {b"b": GOOD},
        {b"l": b"1"},
        {},
        {b"l": b"one", b"b": GOOD},
        {b"l": b"", b"b": GOOD},
    ],
)
def test_stream_entry_without_line_or_body_raises_codec_error(stream_fields: dict[bytes, bytes]) -> None:
    with pytest.raises(CodecError):
        decode_entry("job-1", "1-0", stream_fields)


@pytest.mark.parametrize("position, value", [(1, "not-a-ts"), (2, [20])])
def test_well_shaped_body_with_wrong_types_raises_codec_error(position: int, value: object) -> None:
    corrupted = list(_GOOD_LIST)
    corrupted[position] = value
    with pytest.raises(CodecError):
        decode_entry("job-1", "1-0", {b"l": b"1", b"b": msgpack.packb(corrupted)})


# ---- batches --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "first_byte"),
    [(0, 0x90), (1, 0x91), (15, 0x9F), (16, 0xDC), (65535, 0xDC), (65536, 0xDD)],
)
def test_pack_batch_is_a_msgpack_array(n: int, first_byte: int) -> None:
    values = [f"item-{i}" for i in range(n)]
    packed = pack_batch([msgpack.packb(v) for v in values])
    assert packed[0] == first_byte
    assert msgpack.unpackb(packed, raw=False) == values


def test_pack_batch_of_control_tuples() -> None:
    items = [pack_control("s", "w", "src", i, KIND_LOG, "", body(f"m{i}", seq=i)) for i in range(1, 20)]
    decoded = msgpack.unpackb(pack_batch(items), raw=True)
    assert len(decoded) == 19
    for i, control in enumerate(decoded, start=1):
        assert control[:6] == [b"s", b"w", b"src", i, KIND_LOG, b""]
        assert unpack_body(control[6])[4] == f"m{i}"


# ---- fields size ----------------------------------------------------------------------------


def test_oversized_fields_are_refused() -> None:
    with pytest.raises(InvalidEntry) as info:
        body(fields={"blob": "x" * (2 * MAX_FIELDS_BYTES)})
    assert info.value.field == "fields"
    assert str(MAX_FIELDS_BYTES) in info.value.message


def test_fields_under_the_limit_and_a_big_message_are_accepted() -> None:
    raw = body("m" * 60_000, fields={"blob": "x" * (MAX_FIELDS_BYTES - 1000)})
    assert decode(raw)["fields"] == {"blob": "x" * (MAX_FIELDS_BYTES - 1000)}


def test_no_fields_means_no_fields_limit_check() -> None:
    assert decode(body("😀" * 100_000))["msg"] == "😀" * 100_000


def test_small_fields_are_not_refused_because_of_a_multibyte_message() -> None:
    raw = body("😀" * 16384, fields={"blob": "x" * 20_000})
    assert decode(raw)["fields"] == {"blob": "x" * 20_000}


def test_fields_just_over_the_limit_are_refused() -> None:
    fields = {"blob": "x" * (MAX_FIELDS_BYTES + 1000)}
    assert len(msgpack.packb(fields)) > MAX_FIELDS_BYTES + 1000
    with pytest.raises(InvalidEntry):
        body(fields=fields)


# ---- property: anything valid round-trips ----------------------------------------------------

_SAFE_NAME = st.text(alphabet=st.sampled_from("abcXYZ0189 ._:-/éß日本😀"), min_size=1, max_size=40)
_JOB = st.text(alphabet=st.sampled_from("abcXYZ0189._:-"), min_size=1, max_size=128)
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=25,
)
_FIELDS = st.none() | st.dictionaries(st.text(max_size=10), _JSON, max_size=6)


@settings(max_examples=300, deadline=None)
@given(
    job=_JOB,
    msg=st.text(),
    names=st.tuples(*[st.none() | _SAFE_NAME for _ in range(6)]),
    level=st.sampled_from(sorted(LEVELS.values())),
    kind=st.sampled_from([KIND_LOG, KIND_STATUS, KIND_END]),
    seq=st.none() | st.integers(min_value=1, max_value=2**53),
    line=st.integers(min_value=1, max_value=2**53),
    ts_ms=st.integers(min_value=0, max_value=253402300799999),
    fields=_FIELDS,
)
def test_property_round_trip(
    job: str,
    msg: str,
    names: tuple[str | None, ...],
    level: int,
    kind: int,
    seq: int | None,
    line: int,
    ts_ms: int,
    fields: dict[str, Any] | None,
) -> None:
    step, worker, parent, job_name, job_type, src = names
    status = None if kind == KIND_LOG else "running"
    clean = check_fields(fields)
    raw = pack_body(
        ts_ms, level, kind, msg, step, worker, parent, status, job_name, job_type, src, seq, clean
    )
    entry = decode_entry(job, "1-0", {b"l": str(line).encode(), b"b": raw})
    assert set(entry) == ENTRY_KEYS
    expected = {
        "id": "1-0", "job": job, "job_name": job_name, "job_type": job_type, "step": step,
        "worker": worker, "parent": parent, "line": line, "level": {v: k for k, v in LEVELS.items()}[level],
        "kind": ["log", "status", "end"][kind], "status": status, "msg": msg, "ts": ms_to_iso(ts_ms),
        "src": src, "seq": seq, "fields": fields,
    }  # fmt: skip
    assert entry == expected
    assert ISO_RE.fullmatch(entry["ts"])
    text = entry_json(entry)
    assert "\n" not in text
    assert "\r" not in text
    assert json.loads(text) == expected


@pytest.mark.parametrize(
    ("ts_ms", "text"),
    [
        (-62_135_596_800_000, "0001-01-01T00:00:00.000Z"),
        (-1, "1969-12-31T23:59:59.999Z"),
        (253_402_300_799_999, "9999-12-31T23:59:59.999Z"),
    ],
)
def test_timestamps_are_padded_iso_8601_at_the_edges(ts_ms: int, text: str) -> None:
    assert ms_to_iso(ts_ms) == text
    assert iso_to_ms(text) == ts_ms


@settings(max_examples=300, deadline=None)
@given(
    msg=st.text() | st.builds(str.__mul__, st.text(min_size=1, max_size=9), st.integers(3000, 9000)),
    names=st.tuples(*[st.none() | _SAFE_NAME for _ in range(5)]),
    src=_SAFE_NAME | st.text(max_size=300),
    level=st.sampled_from(sorted(LEVELS.values())),
    seq=st.integers(min_value=1, max_value=2**63),
    ts_ms=st.integers(min_value=-62_135_596_800_000, max_value=253402300799999),
    fields=_FIELDS | st.just({"s": "\ud800 lone"}),
)
def test_line_packer_makes_the_bytes_pack_item_makes(
    msg: str, names: tuple[str | None, ...], src: str, level: int, seq: int, ts_ms: int, fields: Any
) -> None:
    step, worker, parent, job_name, job_type = names
    expected = pack_item(
        Draft(level, KIND_LOG, msg, step, worker, parent, None, fields, job_name, job_type, ts_ms), src, seq
    )
    assert (
        LinePacker(src, step, worker, parent, job_name, job_type).pack(ts_ms, level, msg, seq, fields)
        == expected
    )


def test_line_packer_refuses_oversized_fields_as_pack_item_does() -> None:
    with pytest.raises(InvalidEntry) as info:
        LinePacker("src", "s", "w", None, None, None).pack(
            0, 20, "m", 1, {"blob": "x" * (MAX_FIELDS_BYTES + 1)}
        )
    assert info.value.field == "fields"
