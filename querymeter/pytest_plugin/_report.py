"""The --querymeter summary as text: the run's totals, then the worst tests."""

from __future__ import annotations

from typing import Any

__all__ = ["summary_lines"]


def summary_lines(document: dict[str, Any], worst: int) -> list[str]:
    """The lines of the terminal summary of a run (``_Run.document()``)."""
    totals = document["totals"]
    tests = document["tests"]
    lines = [
        f"{_many(totals['tests'], 'test')} ran {_many(totals['queries'], 'query', 'queries')} "
        f"({totals['errors']} raised) in {totals['db_seconds'] * 1000:.1f} ms of DB time; "
        f"their fixtures ran {totals['fixture_queries']} more"
    ]
    if not tests:
        return lines
    by_queries = sorted(tests, key=lambda test: (-test["queries"], -test["db_seconds"]))
    by_time = sorted(tests, key=lambda test: (-test["db_seconds"], -test["queries"]))
    for title, ranked in (("most queries", by_queries), ("most DB time", by_time)):
        chosen = [test for test in ranked[:worst] if test["queries"] or test["db_seconds"]]
        if not chosen:
            continue
        lines.append("")
        lines.append(f"the {_many(len(chosen), 'test')} with the {title}:")
        lines.append(f"  {'queries':>8} {'raised':>7} {'DB ms':>9} {'N+1':>4}  test")
        for test in chosen:
            lines.append(
                f"  {test['queries']:>8} {test['errors']:>7} {test['db_seconds'] * 1000:>9.2f} "
                f"{len(test['n_plus_one']):>4}  {test['nodeid']}"
            )
    repeating = [test for test in tests if test["n_plus_one"]]
    if repeating:
        lines.append("")
        lines.append(
            f"{_many(len(repeating), 'test')} repeated a statement more than the N+1 threshold:"
        )
        for test in repeating[:worst]:
            first = test["n_plus_one"][0]
            lines.append(
                f"  {test['nodeid']}: {first['calls']} x {first['fingerprint'][:120]} "
                f"(in {first['where']})"
            )
    return lines


def _many(count: int, one: str, many: str | None = None) -> str:
    return f"{count} {one if count == 1 else many or one + 's'}"
