"""What the plugin checks in a test's queries: ignore patterns, counts, N+1, and the failure text.

A test's statements are counted by fingerprint (see docs/statements.md): the
statement with its literals replaced by ``?``, in lower case, so that
``SELECT * FROM item WHERE order_id = 7`` and ``... = 8`` are one statement
ran twice.  Ignore patterns are matched against those fingerprints.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "TRANSACTION_CONTROL",
    "Counts",
    "IgnorePatterns",
    "describe",
    "repeated",
    "statement_counts",
]

#: Transaction-control statements, to pass as ``ignore=``: what an ORM sends
#: around the application's own statements (SAVEPOINT and RELEASE for nested
#: transactions, above all), which a query budget usually should not count.
#: (``"rollback"`` covers ``rollback to savepoint ...`` and ``"release"``
#: ``release savepoint ...``: a pattern matches the start of a fingerprint.)
TRANSACTION_CONTROL = (
    "begin",
    "start transaction",
    "commit",
    "end",
    "rollback",
    "savepoint",
    "release",
    "set transaction",
)

#: The rows a statement table keeps besides its fingerprints.
UNTEXTED = "(queries without statement text)"
EVICTED = "(statements evicted from the table)"

# At most this many statements are listed in a failure message; the rest are counted.
_MAX_LISTED = 20
# A fingerprint longer than this is cut in failure messages.
_MAX_FINGERPRINT_CHARS = 300


class IgnorePatterns:
    """Which fingerprints a check leaves out.

    A pattern is a string or a compiled regular expression.  A string matches a
    fingerprint that starts with it, case and runs of whitespace aside, ending
    at a word boundary: ``"savepoint"`` matches ``savepoint sa_savepoint_1``
    but not ``savepoints_log ...``; ``*`` in it matches any run of characters
    (``"select * from django_session*"``, ``"*for update"``).  A compiled
    regular expression matches where ``pattern.search(fingerprint)`` does.
    """

    __slots__ = ("_matchers", "patterns")

    def __init__(self, patterns: object = ()) -> None:
        items: list[Any]
        if isinstance(patterns, str | re.Pattern):
            items = [patterns]
        elif isinstance(patterns, Iterable):
            items = list(patterns)
        else:
            raise TypeError(
                "ignore must be a pattern (a str or a compiled regular expression) or a "
                f"sequence of them, not {type(patterns).__name__}"
            )
        matchers: list[re.Pattern[str]] = []
        for pattern in items:
            if isinstance(pattern, re.Pattern):
                if not isinstance(pattern.pattern, str):
                    raise TypeError("an ignore pattern must be a str pattern, not a bytes one")
                matchers.append(pattern)
            elif isinstance(pattern, str):
                matchers.append(_compile(pattern))
            else:
                raise TypeError(
                    "each ignore pattern must be a str or a compiled regular expression, "
                    f"not {type(pattern).__name__}"
                )
        self.patterns = tuple(items)
        self._matchers = tuple(matchers)

    def __call__(self, fingerprint: str) -> bool:
        """Whether the fingerprint is ignored."""
        return any(matcher.search(fingerprint) for matcher in self._matchers)

    def __add__(self, other: IgnorePatterns) -> IgnorePatterns:
        return IgnorePatterns((*self.patterns, *other.patterns))

    def __bool__(self) -> bool:
        return bool(self._matchers)

    def __repr__(self) -> str:
        return f"IgnorePatterns({list(self.patterns)!r})"


def _compile(pattern: str) -> re.Pattern[str]:
    words = pattern.strip().lower().split()
    if not words:
        raise ValueError("an ignore pattern must not be empty")
    parts = []
    for word in words:
        parts.append(".*".join(re.escape(piece) for piece in word.split("*")))
    body = r"\s+".join(parts)
    # A word boundary at the end unless the pattern ends in a wildcard or a
    # non-word character (where the fingerprint may go on with anything).
    tail = r"(?!\w)" if re.match(r".*\w$", words[-1]) else ""
    return re.compile(r"\A\s*" + body + tail, re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class Counts:
    """The statements of a stretch of a test, by fingerprint, split by the ignore patterns.

    ``statements`` and ``ignored`` are (fingerprint, calls) pairs, the most
    repeated first, then in the order they first ran.
    """

    statements: tuple[tuple[str, int], ...]
    ignored: tuple[tuple[str, int], ...]

    @property
    def queries(self) -> int:
        """The statements counted (not ignored)."""
        return sum(calls for _, calls in self.statements)

    @property
    def ignored_queries(self) -> int:
        """The statements left out by the ignore patterns."""
        return sum(calls for _, calls in self.ignored)


def statement_counts(interval: Any, ignore: IgnorePatterns) -> Counts:
    """Counts from a ``StatementsInterval`` of the test's meter."""
    rows: list[tuple[str, int, int]] = []
    for stats in interval.statements:
        if stats.calls:
            rows.append((stats.fingerprint, stats.calls, stats.first_seen_ns))
    for name, stats in ((UNTEXTED, interval.untexted), (EVICTED, interval.evicted)):
        if stats.calls:
            rows.append((name, stats.calls, 0))
    rows.sort(key=lambda row: (-row[1], row[2], row[0]))
    kept = tuple((name, calls) for name, calls, _ in rows if not _ignored(name, ignore))
    ignored = tuple((name, calls) for name, calls, _ in rows if _ignored(name, ignore))
    return Counts(kept, ignored)


def _ignored(name: str, ignore: IgnorePatterns) -> bool:
    # The table's own rows are not statements: no pattern can name them.
    return name not in (UNTEXTED, EVICTED) and ignore(name)


def repeated(
    counts: Mapping[str, int], threshold: int, ignore: IgnorePatterns
) -> list[tuple[str, int]]:
    """The fingerprints that ran more than ``threshold`` times, not ignored, most first."""
    found = [
        (name, calls)
        for name, calls in counts.items()
        if calls > threshold and name not in (UNTEXTED, EVICTED) and not ignore(name)
    ]
    found.sort(key=lambda item: (-item[1], item[0]))
    return found


def describe(
    statements: Iterable[tuple[str, int]], ignored: Iterable[tuple[str, int]] = ()
) -> list[str]:
    """The lines listing statements with their counts, for a failure message."""
    lines: list[str] = []
    listed = list(statements)
    width = max((len(str(calls)) for _, calls in listed), default=1)
    for name, calls in listed[:_MAX_LISTED]:
        lines.append(f"  {calls:>{width}} x {_cut(name)}")
    if len(listed) > _MAX_LISTED:
        rest = listed[_MAX_LISTED:]
        lines.append(f"  ... and {len(rest)} more statements ({sum(c for _, c in rest)} queries)")
    left_out = list(ignored)
    if left_out:
        total = sum(calls for _, calls in left_out)
        lines.append(f"  ignored ({total}):")
        for name, calls in left_out[:_MAX_LISTED]:
            lines.append(f"  {calls:>{width}} x {_cut(name)}")
        if len(left_out) > _MAX_LISTED:
            lines.append(f"  ... and {len(left_out) - _MAX_LISTED} more ignored statements")
    return lines


def _cut(text: str) -> str:
    text = " ".join(text.split())
    if len(text) > _MAX_FINGERPRINT_CHARS:
        return text[: _MAX_FINGERPRINT_CHARS - 1] + "…"
    return text


def check_count(name: str, value: object, *, minimum: int) -> int:
    """A count argument (max=, exactly=, n, threshold), validated."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, not {value}")
    return value
