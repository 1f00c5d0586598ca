"""broker.masking without Redis: what is masked, what is kept, how many, and the refusals."""

from __future__ import annotations

import re
import threading

import msgpack
import pytest

from broker.codec import LinePacker, content_fingerprint, pack_item
from broker.constants import KIND_LOG, LEVELS
from broker.entry import make_draft
from broker.errors import InvalidConfig
from broker.masking import BUILTIN_PATTERNS, MASK, Masker, Pattern, compile_pattern

# Made-up credentials in each well-known format (none is real).
AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
AWS_STS = "ASIAY34FZKBOKMUTVV7A"
GHP = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
GHS = "ghs_" + "Z" * 36
GITHUB_PAT = "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJ"
GLPAT = "glpat-" + "x1y2z3" * 4
SLACK = "xoxb-123456789012-abcdefABCDEF"
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ."
    "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA1234\nabcd==\n-----END RSA PRIVATE KEY-----"
BUILTIN = Masker(patterns=BUILTIN_PATTERNS)


BUILTIN_EXAMPLES = [
    ("Authorization: Bearer abc.DEF-123_xyz~+/=", "Authorization: [MASKED]"),
    ("curl -H 'authorization: bearer s3cr3tT0ken'", "curl -H 'authorization: [MASKED]'"),
    ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "[MASKED]"),
    (f"key={AWS_KEY} region=eu", "key=[MASKED] region=eu"),
    (f"sts {AWS_STS}", "sts [MASKED]"),
    (f"git clone https://x:{GHP}@github.com/o/r", "git clone https://x:[MASKED]@github.com/o/r"),
    (f"token {GHS}.", "token [MASKED]."),
    (f"GH_TOKEN={GITHUB_PAT}", "GH_TOKEN=[MASKED]"),
    (f"{GLPAT} {SLACK}", "[MASKED] [MASKED]"),
    (f"cookie jwt={JWT}; path=/", "cookie jwt=[MASKED]; path=/"),
    (f"key:\n{PEM}\ndone", "key:\n[MASKED]\ndone"),
    ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk (clipped", "[MASKED]"),
]


@pytest.mark.parametrize(("text", "expected"), BUILTIN_EXAMPLES)
def test_builtin_patterns_mask_each_well_known_format(text: str, expected: str) -> None:
    masked, count = BUILTIN.mask_text(text)
    assert masked == expected
    assert count == expected.count(MASK)


@pytest.mark.parametrize(
    "text",
    [
        "processed item 12 of 3000",
        "the Bearer token scheme",  # prose: fewer than 8 token characters after it
        "AKIA is a prefix, AKIA1234 too short",
        "eyJ alone, eyJhbGciOi without dots",
        "ghp_short",
        "-----BEGIN PUBLIC KEY-----\nMIIBIjANBg",
    ],
)
def test_builtin_patterns_leave_ordinary_text(text: str) -> None:
    assert BUILTIN.mask_text(text) == (text, 0)


def test_values_are_masked_wherever_they_appear_longest_first() -> None:
    m = Masker(["hunter2!", "hunter2!-extended"])
    assert m.mask_text("pw=hunter2!-extended and xhunter2!x") == ("pw=[MASKED] and x[MASKED]x", 2)


def test_regex_metacharacters_in_values_are_literal() -> None:
    m = Masker(["a.b*c"])
    assert m.mask_text("a.b*c axbbc") == ("[MASKED] axbbc", 1)


def test_fields_string_values_are_masked_nested_keys_and_other_types_kept() -> None:
    m = Masker(["s3cret"])
    fields = {"s3cret": "s3cret", "n": 5, "ok": True, "nested": {"list": ["x s3cret", 1.5, None, ["s3cret"]]}}
    text, masked, count = m.mask("msg s3cret", fields)
    assert text == "msg [MASKED]"
    assert masked == {
        "s3cret": MASK,
        "n": 5,
        "ok": True,
        "nested": {"list": ["x [MASKED]", 1.5, None, [MASK]]},
    }
    assert count == 4
    assert fields["s3cret"] == "s3cret", "the caller's dict is not changed"


def test_untouched_fields_are_returned_as_they_are() -> None:
    fields = {"a": {"b": ["c"]}}
    assert Masker(["zzzz"]).mask("m", fields) == ("m", fields, 0)


@pytest.mark.parametrize("value", ["", "a", "abc", 1234, None, b"bytes"])
def test_short_or_non_text_values_are_refused(value: object) -> None:
    with pytest.raises(InvalidConfig, match="mask value"):
        Masker([value])  # type: ignore[list-item]
    with pytest.raises(InvalidConfig, match="mask value"):
        Masker(["long enough"]).add(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("pattern", "why"),
    [("a(b", "not a valid regular expression"), ("x(?i)y", "global flags"), ("a*", "empty string")],
)
def test_bad_patterns_are_refused_naming_the_pattern(pattern: str, why: str) -> None:
    with pytest.raises(InvalidConfig, match=why) as e:
        compile_pattern(pattern)
    assert repr(pattern) in str(e.value)


def test_an_operator_pattern_runs_on_every_text() -> None:
    m = Masker(patterns=[*BUILTIN_PATTERNS, r"(?i:password)=\S+"])
    assert m.mask_text(f"PASSWORD=x1 {AWS_KEY}") == ("[MASKED] [MASKED]", 2)


def test_values_added_later_are_masked_and_repr_shows_no_secret() -> None:
    m = Masker()
    assert m.mask_text("tok-1234") == ("tok-1234", 0)
    m.add("tok-1234")
    m.add("tok-1234")  # twice is once
    assert m.mask_text("tok-1234") == (MASK, 1)
    assert "tok" not in repr(m)


def test_concurrent_adds_lose_no_value() -> None:
    m = Masker()
    values = [f"secret-{i:04d}" for i in range(200)]
    threads = [
        threading.Thread(target=lambda chunk=values[i::4]: [m.add(v) for v in chunk]) for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert m.mask_text(" ".join(values)) == (" ".join([MASK] * 200), 200)


def test_a_message_is_masked_before_it_is_clipped() -> None:
    secret = "S" * 40
    msg = "x" * 250 + secret + "y" * 300  # a clip at 256 bytes would cut the secret in two
    d = make_draft(
        "j", msg, level=LEVELS["info"], kind=KIND_LOG, max_message_bytes=256, masker=Masker([secret])
    )
    assert "SSSS" not in d.text and d.masked == 1


def test_the_masked_count_is_the_control_tuples_ninth_element_outside_the_fingerprint() -> None:
    m = Masker(["s3cret"])
    d = make_draft("j", "a s3cret", level=20, kind=KIND_LOG, max_message_bytes=1024, masker=m, ts_ms=5)
    plain = make_draft("j", "a [MASKED]", level=20, kind=KIND_LOG, max_message_bytes=1024, ts_ms=5)
    item = msgpack.unpackb(pack_item(d, "s", 1), raw=True)
    unmasked_item = msgpack.unpackb(pack_item(plain, "s", 1), raw=True)
    assert len(item) == 9 and item[8] == 1 and len(unmasked_item) == 8
    assert item[:8] == unmasked_item, "same body, same fingerprint: a retry is still a duplicate"
    assert item[7] == content_fingerprint(item[6])


def test_a_handle_packer_makes_the_same_bytes_as_pack_item_when_masked() -> None:
    packer = LinePacker("src", "s", "w", None, "n", "t")
    d = make_draft("j", "[MASKED] x", level=20, kind=KIND_LOG, step="s", worker="w", job_name="n",
                   job_type="t", max_message_bytes=1024, ts_ms=77)._replace(masked=3)  # fmt: skip
    assert packer.pack(77, 20, "[MASKED] x", 4, None, 3) == pack_item(d, "src", 4)


@pytest.mark.parametrize("pattern", BUILTIN_PATTERNS, ids=lambda p: p.name)
def test_each_builtin_pattern_declares_its_shortest_match_and_triggers_truly(pattern: Pattern) -> None:
    """``min_len`` and ``triggers`` let texts be skipped: both must hold for every match."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import sre_parse  # the parser's own width of the shortest match

    assert pattern.min_len == sre_parse.parse(pattern.regex).getwidth()[0]
    examples = [t for t, _ in BUILTIN_EXAMPLES if re.search(pattern.regex, t)]
    assert examples, f"no example exercises {pattern.name}"
    for text in examples:
        match = re.search(pattern.regex, text)
        assert match is not None and any(t in match.group() for t in pattern.triggers)
