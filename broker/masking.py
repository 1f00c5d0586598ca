"""Secret masking: what a worker prints is cleaned before it is packed, so no secret reaches Redis.

Every CI log system does this (GitLab masked variables, GitHub ``::add-mask::``); here both
write paths mask with one :class:`Masker` (docs/design.md §2, §4, §5):

* a publisher masks the literal values it was given (``mask=[...]``, ``JobHandle.mask(value)``);
* the gateway masks ``LOGBROKER_MASK_PATTERNS`` and the well-known credential formats of
  :data:`BUILTIN_PATTERNS`.

Each match in ``msg`` and in the string values of ``fields`` (nested) becomes ``[MASKED]``, and
the number of matches travels with the entry to the write script, which keeps a per-job count.

Why it is fast enough for the hot path: one compiled alternation does the substitution, but it
only runs when one of the masker's *triggers* occurs in the text (``str.__contains__``, a C scan
~6x faster than ``re`` searching the same 200 characters for 5 literals). A literal value is its
own trigger; a built-in pattern has the fixed text every match contains (``AKIA``, ``eyJ``...). A
pattern given by an operator has none, so with ``LOGBROKER_MASK_PATTERNS`` the regex runs on
every text. With nothing configured there is no masker at all (``None``): no call, no cost.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .errors import InvalidConfig

MASK = "[MASKED]"
MIN_MASK_LEN = 4  # masking "a" or "the" would destroy the log, not protect a secret


@dataclass(frozen=True, slots=True)
class Pattern:
    """A credential format: its regex, fixed texts of which every match contains one, and the
    length of its shortest match (a shorter text, such as most ``fields`` values, is skipped)."""

    name: str
    regex: str
    triggers: tuple[str, ...]
    min_len: int


# Formats with a recognisable shape, as secret scanners (GitHub secret scanning, gitleaks) know
# them. Each match is replaced whole: ``Authorization: Bearer x`` becomes ``Authorization: [MASKED]``.
BUILTIN_PATTERNS: tuple[Pattern, ...] = (
    # RFC 6750 bearer tokens, in a header or a curl/HTTP-library dump (token68 characters; 8 or
    # more, so the prose "Bearer token" stays)
    Pattern("bearer", r"(?:[Bb]earer|BEARER)[ \t]+[A-Za-z0-9\-._~+/]{8,}=*", ("earer", "EARER"), 15),
    # RFC 7617 basic credentials after an Authorization header name: base64 of user:password
    Pattern(
        "basic",
        r"(?:[Aa]uthorization|AUTHORIZATION)[ \t]*[:=][ \t]*(?:[Bb]asic|BASIC)[ \t]+[A-Za-z0-9+/]+=*",
        ("uthorization", "UTHORIZATION"),
        21,
    ),
    # AWS access key ids: long-term (AKIA) and temporary STS (ASIA), 20 characters
    Pattern("aws_access_key_id", r"(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])", ("AKIA", "ASIA"), 20),
    # GitHub tokens: personal (ghp_), OAuth (gho_), app installation (ghs_), user-to-server
    # (ghu_), refresh (ghr_), fine-grained personal (github_pat_)
    Pattern("github_token", r"gh[opsur]_[A-Za-z0-9]{36,255}", ("ghp_", "gho_", "ghs_", "ghu_", "ghr_"), 40),
    Pattern("github_pat", r"github_pat_[A-Za-z0-9_]{22,255}", ("github_pat_",), 33),
    # GitLab personal/project access tokens, the other forge the issue names
    Pattern("gitlab_token", r"glpat-[A-Za-z0-9_\-]{20,255}", ("glpat-",), 26),
    # Slack bot/user/app tokens
    Pattern("slack_token", r"xox[abprs]-[A-Za-z0-9\-]{10,255}", ("xox",), 15),
    # JWTs (JWS compact form): base64url of '{"' starts every header and payload with eyJ
    Pattern("jwt", r"eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*", ("eyJ",), 24),
    # PEM private keys (RSA, EC, OPENSSH, ENCRYPTED...): the whole block; a block cut off (a
    # clipped message) is masked up to the end of the text
    Pattern(
        "private_key",
        r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----(?:[\s\S]*?-----END [A-Z0-9 ]*PRIVATE KEY-----|[\s\S]*)",
        ("PRIVATE KEY-----",),
        27,
    ),
)


def check_mask_value(value: object) -> str:
    if not isinstance(value, str):
        raise InvalidConfig(f"a mask value must be a string, got {type(value).__name__}")
    if len(value) < MIN_MASK_LEN:
        raise InvalidConfig(
            f"a mask value must be at least {MIN_MASK_LEN} characters long (got one of {len(value)}): "
            "masking a short value would mask every place it occurs in ordinary text"
        )
    return value


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """One operator pattern, checked as it will run: inside the alternation (so a global flag
    such as ``(?i)`` not at the start is refused here, naming the pattern, not at first use)."""
    try:
        re.compile(pattern)  # the error's position is the pattern's own
        compiled = re.compile(f"(?:{pattern})")
    except re.error as e:
        raise InvalidConfig(f"mask pattern {pattern!r} is not a valid regular expression: {e}") from None
    if compiled.fullmatch(""):
        raise InvalidConfig(
            f"mask pattern {pattern!r} matches the empty string: it would put {MASK} between every character"
        )
    return compiled


class Masker:
    """Literal values and patterns, masked in one pass; ``add`` is safe from any thread.

    Thread safety: ``add`` builds a new ``_state`` and swaps it in with one assignment, so a
    concurrent ``mask_text`` uses the old or the new one, never half of each.
    """

    __slots__ = ("_lock", "_patterns", "_state", "_values")

    def __init__(self, values: Iterable[str] = (), patterns: Iterable[Pattern | str] = ()) -> None:
        self._lock = threading.Lock()
        self._values: list[str] = []
        self._patterns: list[Pattern | str] = []
        for p in patterns:
            if isinstance(p, str):
                compile_pattern(p)
            self._patterns.append(p)
        for v in values:
            value = check_mask_value(v)
            if value not in self._values:
                self._values.append(value)
        self._state = self._build()

    def add(self, value: str) -> None:
        """Mask ``value`` from now on (entries already queued are packed, and stay as they are)."""
        check_mask_value(value)
        with self._lock:
            if value not in self._values:
                self._values.append(value)
                self._state = self._build()

    def _build(self) -> tuple[int, tuple[str, ...] | None, re.Pattern[str] | None]:
        """(shortest match, triggers, alternation); triggers ``None``: some pattern has none,
        so the regex runs on every text long enough."""
        parts: list[str] = []
        triggers: list[str] | None = []
        lengths: list[int] = []
        for p in self._patterns:
            if isinstance(p, str):
                parts.append(f"(?:{p})")
                triggers = None
                lengths.append(1)
            else:
                parts.append(f"(?:{p.regex})")
                lengths.append(p.min_len)
                if triggers is not None:
                    triggers.extend(p.triggers)
        # longest first: a value that contains another is masked whole, not around the shorter one
        for value in sorted(self._values, key=len, reverse=True):
            parts.append(re.escape(value))
            lengths.append(len(value))
            if triggers is not None:
                triggers.append(value)
        if not parts:
            return 0, (), None
        regex = re.compile("|".join(parts))
        return min(lengths), (None if triggers is None else tuple(dict.fromkeys(triggers))), regex

    def mask_text(self, text: str) -> tuple[str, int]:
        """``text`` with every match replaced by ``[MASKED]``, and the number of matches."""
        min_len, triggers, regex = self._state
        if regex is None or len(text) < min_len:
            return text, 0
        if triggers is not None:
            for trigger in triggers:
                if trigger in text:
                    break
            else:
                return text, 0
        return regex.subn(MASK, text)

    def mask_value(self, value: Any) -> tuple[Any, int]:
        """String values, nested in objects and lists, masked (keys are names, kept as they are)."""
        if isinstance(value, str):
            return self.mask_text(value)
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            total = 0
            for key, item in value.items():
                out[key], n = self.mask_value(item)
                total += n
            return (out, total) if total else (value, 0)
        if isinstance(value, list):
            items = []
            total = 0
            for item in value:
                masked, n = self.mask_value(item)
                items.append(masked)
                total += n
            return (items, total) if total else (value, 0)
        return value, 0

    def mask(self, text: str, fields: dict[str, Any] | None) -> tuple[str, dict[str, Any] | None, int]:
        """An entry's ``msg`` and ``fields``, masked, and how many values were masked in both."""
        text, count = self.mask_text(text)
        if fields is not None:
            fields, n = self.mask_value(fields)
            count += n
        return text, fields, count

    def __repr__(self) -> str:  # never the values themselves: they are secrets
        return f"Masker({len(self._values)} values, {len(self._patterns)} patterns)"
