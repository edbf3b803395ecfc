"""The initial scope of an incident: every statement or a few, one table or all, one tag or all.

The errors of the window and its latency excess (the time queries took beyond
what the same statements took before) are broken down by fingerprint, by the
tables the fingerprints name, and by scope tag.  Where one part holds most of
it, the incident is that part's; where it is spread, it is everyone's (the
database itself, the network, the pool).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..statements import tables_of

__all__ = ["Part", "ScopeBreakdown", "StatementFigures", "breakdown", "tables_of"]

#: A part that holds at least this share of the whole is "the" part.
CONCENTRATED = 0.8
#: Parts listed per kind at most.
MAX_PARTS = 5


@dataclass(frozen=True, slots=True)
class StatementFigures:
    """One fingerprint's figures in the window, and its mean before it (None: new)."""

    fingerprint: str
    calls: int
    errors: int
    total_s: float
    baseline_mean_s: float | None

    @property
    def excess_s(self) -> float:
        """Time beyond the baseline's mean per call, s; all of it for a new statement."""
        if self.baseline_mean_s is None:
            return self.total_s
        return max(0.0, self.total_s - self.calls * self.baseline_mean_s)


@dataclass(frozen=True, slots=True)
class Part:
    """One fingerprint, table or tag value, and its share of the window's errors and excess."""

    kind: str  # "statement", "table" or a tag's key
    name: str
    errors: int
    error_share: float | None
    excess_s: float
    excess_share: float | None

    def as_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "name": self.name,
            "errors": self.errors,
            "error_share": self.error_share,
            "excess_s": self.excess_s,
            "excess_share": self.excess_share,
        }


@dataclass(frozen=True, slots=True)
class ScopeBreakdown:
    """The window's errors and latency excess by statement, by table and by tag."""

    statements: tuple[Part, ...]
    tables: tuple[Part, ...]
    tags: tuple[Part, ...]
    #: One sentence per kind: "errors: one statement (92 %) ...".
    summary: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        return {
            "statements": [p.as_dict() for p in self.statements],
            "tables": [p.as_dict() for p in self.tables],
            "tags": [p.as_dict() for p in self.tags],
            "summary": list(self.summary),
        }


def _parts(kind: str, figures: Mapping[str, tuple[int, float]]) -> list[Part]:
    """Parts by name from (errors, excess_s), largest errors then excess first."""
    all_errors = sum(e for e, _ in figures.values())
    all_excess = sum(x for _, x in figures.values())
    parts = [
        Part(
            kind,
            name,
            errors,
            errors / all_errors if all_errors else None,
            excess,
            excess / all_excess if all_excess > 0 else None,
        )
        for name, (errors, excess) in figures.items()
        if errors or excess > 0
    ]
    parts.sort(key=lambda p: (-p.errors, -p.excess_s, p.name))
    return parts


def _concentration(what: str, kind: str, parts: list[Part], share: str, total: int) -> str | None:
    """Where ``what`` (errors or excess) sits among ``total`` parts of one kind, in words."""
    ranked = sorted(
        (p for p in parts if getattr(p, share) is not None),
        key=lambda p: -float(getattr(p, share)),
    )
    if not ranked:
        return None
    top = ranked[0]
    top_share = float(getattr(top, share))
    if top_share >= CONCENTRATED:
        return f"{what}: one {kind} ({100 * top_share:.0f} %): {top.name}"
    few = ranked[:3]
    if len(ranked) > 3 and sum(float(getattr(p, share)) for p in few) >= CONCENTRATED:
        names = "; ".join(p.name for p in few)
        return f"{what}: a few {kind}s (3 of {len(ranked)}): {names}"
    return f"{what}: spread over {len(ranked)} of {total} {kind}s"


def breakdown(
    statements: Iterable[StatementFigures],
    tags: Mapping[str, Mapping[str, tuple[int, float]]],
) -> ScopeBreakdown:
    """Break the window's errors and excess down by statement, table and tag.

    ``tags`` maps a tag's key to its values' (errors, excess_s).
    """
    by_statement: dict[str, tuple[int, float]] = {}
    by_table: dict[str, tuple[int, float]] = {}
    for s in statements:
        if not s.calls:
            continue
        by_statement[s.fingerprint] = (s.errors, s.excess_s)
        names = tables_of(s.fingerprint) or ("(no table)",)
        for name in names:
            errors, excess = by_table.get(name, (0, 0.0))
            by_table[name] = (errors + s.errors, excess + s.excess_s)
    statement_parts = _parts("statement", by_statement)
    table_parts = _parts("table", by_table)
    summary = []
    for kind, parts, total in (
        ("statement", statement_parts, len(by_statement)),
        ("table", table_parts, len(by_table)),
    ):
        for what, share in (("errors", "error_share"), ("latency excess", "excess_share")):
            sentence = _concentration(what, kind, parts, share, total)
            if sentence is not None:
                summary.append(sentence)
    tag_parts: list[Part] = []
    for key in sorted(tags):
        parts = _parts(key, tags[key])
        tag_parts.extend(parts[:MAX_PARTS])
        for what, share in (("errors", "error_share"), ("latency excess", "excess_share")):
            sentence = _concentration(what, f"{key}", parts, share, len(tags[key]))
            if sentence is not None:
                summary.append(sentence)
    return ScopeBreakdown(
        tuple(statement_parts[:MAX_PARTS]),
        tuple(table_parts[:MAX_PARTS]),
        tuple(tag_parts),
        tuple(summary),
    )
