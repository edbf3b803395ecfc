"""Statement fingerprints beside a dictionary lookup: a cache hit, a new statement, 1 MB.

Goals: a cache hit within a few dictionary lookups; a new 200-character
statement in 20-50 us (pure Python); a 1 MB statement well under a second,
whatever its shape.
"""

from __future__ import annotations

from typing import Any

import pytest

from querymeter.statements import _fingerprint, fingerprint

from .conftest import OPS, mark_baseline

RANGE = range(OPS)

# 200 characters, the shape of an ORM's query: joins, strings, an IN list, ORDER BY, LIMIT.
STATEMENT = (
    "SELECT u.id, u.name, o.total FROM users u JOIN orders o ON o.user_id = u.id "
    "WHERE u.created_at > '2024-01-01' AND o.status IN (1, 2, 3) "
    "AND u.email LIKE '%@example.com' ORDER BY o.total DESC LIMIT 10"
)
assert len(STATEMENT) == 199

# OPS different statements of that length, so that none is served from the cache.
NEW_STATEMENTS = [STATEMENT.replace("users u", f"users{number:05d} u", 1) for number in RANGE]

ONE_MB_INSERT = "INSERT INTO t (a, b, c) VALUES " + ", ".join(
    f"({number}, 'name {number}', {number}.5)" for number in range(40_000)
)
ONE_MB_PARENTHESES = "(" * 1_000_000


@pytest.mark.benchmark(group="fingerprint", min_rounds=20)
def test_floor_a_dictionary_lookup(benchmark: Any) -> None:
    """The floor: one lookup in a dictionary of str keys."""
    mark_baseline(benchmark)
    table = {STATEMENT: "x"}
    lookup = table.__getitem__

    def run() -> None:
        for _ in RANGE:
            lookup(STATEMENT)

    benchmark(run)


@pytest.mark.benchmark(group="fingerprint", min_rounds=20)
@pytest.mark.parametrize("dialect", [None, "postgresql"])
def test_cache_hit(benchmark: Any, dialect: str | None) -> None:
    """fingerprint(sql) of a statement seen before."""
    fingerprint(STATEMENT, dialect)

    def run() -> None:
        for _ in RANGE:
            fingerprint(STATEMENT, dialect)

    benchmark(run)


@pytest.mark.benchmark(group="fingerprint", min_rounds=10)
@pytest.mark.parametrize("dialect", [None, "mysql", "postgresql", "sqlite"])
def test_new_200_character_statement(benchmark: Any, dialect: str | None) -> None:
    """fingerprint(sql) of statements never seen, cache insertion included (goal: 20-50 us)."""

    def empty_the_cache() -> None:
        _fingerprint._cache.clear()

    def run() -> None:
        for sql in NEW_STATEMENTS:
            fingerprint(sql, dialect)

    benchmark.pedantic(run, setup=empty_the_cache, rounds=10, iterations=1)
    _fingerprint._cache.clear()


@pytest.mark.benchmark(group="fingerprint: 1 MB")
@pytest.mark.parametrize(
    "shape",
    [
        pytest.param(ONE_MB_INSERT, id="multi-row INSERT"),
        pytest.param(ONE_MB_PARENTHESES, id="1 MB of parentheses"),
    ],
)
def test_one_megabyte_statement(benchmark: Any, shape: str) -> None:
    """fingerprint(sql) of a 1 MB statement (never cached: too long to keep)."""
    benchmark.extra_info["ops"] = 1
    benchmark.pedantic(fingerprint, args=(shape,), rounds=3, iterations=1)
