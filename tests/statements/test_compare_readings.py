"""The core's readings for the flight recorder (``_read_rows``) and its comparison of two
readings (``_changed``, ``_totals``): against ``_read`` and a ledger of the queries
recorded, and the same on both cores."""

from __future__ import annotations

import importlib
import random
from pathlib import Path
from typing import Any

import pytest

from querymeter.meter import Meter as MeterType
from querymeter.shared._statements import SharedStatementTable
from querymeter.statements import StatementTable

from ..conftest import load_meter_class

# Each text is its own fingerprint (no literals), so a row's sample_sql names it.
TEXTS = [f"SELECT c{n} FROM t{n % 7} WHERE id = ?" for n in range(40)]


def index(rows: tuple[tuple[Any, ...], ...]) -> dict[str, tuple[Any, ...]]:
    """A reading's rows by fingerprint, as the recorder keeps them."""
    return {row[0]: row for row in rows}


def by_text(rows: dict[str, tuple[Any, ...]]) -> dict[str, str]:
    """Fingerprint by statement text."""
    return {row[1]: fingerprint for fingerprint, row in rows.items()}


def play(
    table: Any, rng: random.Random, texts: list[str], ledger: dict[str, list[int]], queries: int
) -> None:
    """``queries`` queries of random texts, durations, errors and rows, into the table
    (as a hook records them) and into the ledger: text -> [calls, errors, total, total_sq,
    rows, rows_calls]."""
    for _ in range(queries):
        sql = rng.choice(texts)
        elapsed = rng.randrange(1_000, 50_000_000)
        error = rng.random() < 0.1
        # Every fourth statement never reports rows.
        rows = -1 if TEXTS.index(sql) % 4 == 0 else rng.choice([-1, 0, 3, 17])
        times = rng.choice([1, 1, 1, 2])
        table._core._record(sql, None, elapsed, error, rows, times)
        figures = ledger.setdefault(sql, [0, 0, 0, 0, 0, 0])
        figures[0] += times
        figures[1] += times if error else 0
        figures[2] += elapsed * times
        figures[3] += elapsed * elapsed * times
        if rows >= 0:
            figures[4] += rows * times
            figures[5] += times


def with_histograms(reading: tuple[Any, ...]) -> tuple[Any, ...]:
    """A _read_rows reading as _read gives it: each row with its own histogram."""
    dropped, evicted, untexted, rows = reading

    def full(row: tuple[Any, ...]) -> tuple[Any, ...]:
        assert len(row) == 17 and type(row[14]) is bytes
        assert 0 <= row[15] <= row[16] <= len(row[14]) and (row[16] - row[15]) % 8 == 0
        return (*row[:14], row[14][row[15] : row[16]])

    return dropped, full(evicted), full(untexted), tuple(map(full, rows))


def test_read_rows_is_read_with_the_histograms_in_shared_buffers(
    implementation: str, tmp_path: Path
) -> None:
    """_read_rows gives _read's figures, each row's histogram a slice of a bytes object that
    rows share, for a table of one process and for a shared one, through evictions."""
    module = "querymeter.core._c" if implementation == "c" else "querymeter.core._py"
    core_type = importlib.import_module(module).Statements
    tables = [
        StatementTable(30, core_type=core_type),
        SharedStatementTable(
            str(tmp_path / "shared.querymeter.statements"), 30, core_type=core_type
        ),
    ]
    for table in tables:
        rng = random.Random(13)
        ledger: dict[str, list[int]] = {}
        play(table, rng, TEXTS, ledger, 400)
        table._core._record(None, None, 5_000, True, -1)
        # A count past 32 bits makes the C core's histogram 64-bit wide.
        table._core._record(TEXTS[1], None, 70_000, False, 2, 2**33)
        reading = table._core._read()
        assert reading[0] > 0, "the sequence evicts statements"
        assert with_histograms(table._core._read_rows()) == reading


def test_changed_rows_and_their_top_follow_the_ledger(Meter: type[MeterType]) -> None:
    """The changed rows are those the ledger ran since the earlier reading; the top are
    the most time gained (ties by fingerprint), the count with rows is the ledger's."""
    table = Meter().enable_statements(max_statements=100)
    rng = random.Random(7)
    before_ledger: dict[str, list[int]] = {}
    play(table, rng, TEXTS[:30], before_ledger, 300)
    earlier = index(table._core._read()[3])
    # Some of the old statements run again, ten new ones appear, the rest idle.
    step: dict[str, list[int]] = {}
    play(table, rng, TEXTS[10:20] + TEXTS[30:], step, 200)
    rows = index(table._core._read()[3])
    fingerprints = by_text(rows)

    for top in (0, 1, 5, 10, 100):
        chosen, changed, with_rows = table._core._changed(rows, earlier, top)
        gained = sorted(
            ((-figures[2], fingerprints[sql]) for sql, figures in step.items()), key=tuple
        )
        assert chosen == [fingerprint for _, fingerprint in gained[:top]]
        assert changed == len(step)
        ever_rows = {sql for sql in step if before_ledger.get(sql, [0] * 6)[5] + step[sql][5]}
        assert with_rows == len(ever_rows)
    # Compared with an empty earlier reading, every row with calls changed.
    chosen, changed, _ = table._core._changed(rows, {}, 3)
    whole = {sql: before_ledger.get(sql, [0] * 6)[2] + step.get(sql, [0] * 6)[2] for sql in TEXTS}
    assert changed == len(TEXTS)
    assert chosen == [fingerprints[sql] for sql in sorted(whole, key=lambda s: -whole[s])[:3]]
    # Compared with itself, nothing changed.
    assert table._core._changed(rows, rows, 10) == ([], 0, 0)


def test_a_row_evicted_and_made_again_counts_all_its_calls(Meter: type[MeterType]) -> None:
    """A fingerprint whose earlier row had another serial is a new row: all of its time
    is gained in the step."""
    table = Meter().enable_statements(max_statements=20)
    rng = random.Random(3)
    ledger: dict[str, list[int]] = {}
    play(table, rng, TEXTS[:20], ledger, 100)
    earlier = index(table._core._read()[3])
    # Twenty new statements evict old ones; then the old ones come back as new rows.
    play(table, rng, TEXTS[20:], ledger, 100)
    again: dict[str, list[int]] = {}
    play(table, rng, TEXTS[:3], again, 30)
    rows = index(table._core._read()[3])
    remade = [fp for fp, row in rows.items() if fp in earlier and earlier[fp][2] != row[2]]
    assert remade, "the sequence re-creates at least one evicted statement"
    chosen, _, _ = table._core._changed(rows, earlier, len(rows))
    gained = {fingerprint: position for position, fingerprint in enumerate(chosen)}
    for fingerprint in remade:
        assert fingerprint in gained
        sql = rows[fingerprint][1]
        assert rows[fingerprint][3] == again[sql][0], "the new row holds only the new calls"


def test_totals_sum_every_row_exactly_past_64_bits(Meter: type[MeterType]) -> None:
    """_totals sums calls, errors, time, time squared, rows and rows_calls over the rows,
    exactly where the sums need more than 64 bits."""
    table = Meter().enable_statements(max_statements=100)
    rng = random.Random(11)
    ledger: dict[str, list[int]] = {}
    play(table, rng, TEXTS, ledger, 500)
    # Two calls of a minute, 2**40 times over: time past 2**64 ns, its square past 2**100.
    table._core._record(TEXTS[0], None, 60_000_000_000, False, 5, 2**40)
    ledger[TEXTS[0]][0] += 2**40
    ledger[TEXTS[0]][2] += 60_000_000_000 * 2**40
    ledger[TEXTS[0]][3] += 60_000_000_000**2 * 2**40
    ledger[TEXTS[0]][4] += 5 * 2**40
    ledger[TEXTS[0]][5] += 2**40
    rows = table._core._read()[3]
    expected = tuple(sum(figures[k] for figures in ledger.values()) for k in range(6))
    assert expected[2] > 2**64
    assert table._core._totals(rows) == expected
    assert table._core._totals(iter(rows)) == expected
    assert table._core._totals(()) == (0, 0, 0, 0, 0, 0)


def test_both_cores_compare_the_same_sequence_alike() -> None:
    """The C core and the pure-Python core give the same comparisons of the same queries."""
    results = []
    for implementation in ("c", "python"):
        table = load_meter_class(implementation)().enable_statements(max_statements=25)
        rng = random.Random(5)
        ledger: dict[str, list[int]] = {}
        seen = []
        earlier: dict[str, tuple[Any, ...]] = {}
        for second in range(12):
            play(table, rng, TEXTS, ledger, 40 + second * 10)
            rows = index(table._core._read()[3])
            seen.append(
                (
                    table._core._changed(rows, earlier, 4),
                    table._core._changed(rows, earlier, 100),
                    table._core._totals(rows.values()),
                )
            )
            earlier = rows
        results.append(seen)
    assert results[0] == results[1]


def test_bad_arguments_are_refused(Meter: type[MeterType]) -> None:
    """_changed takes two dicts of rows and a top of at least 0; _totals takes rows."""
    table = Meter().enable_statements()
    core = table._core
    with pytest.raises(TypeError):
        core._changed([], {}, 1)
    with pytest.raises(ValueError, match="top must be at least 0"):
        core._changed({}, {}, -1)
    with pytest.raises(TypeError):
        core._totals(None)
