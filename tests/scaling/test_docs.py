"""docs/scaling.md: its Python blocks run in order on PostgreSQL; its output is a real run's."""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import pytest

from querymeter import scaling

from ..servers import PG_DSN, driver, postgres_dsn

DOC = Path(__file__).resolve().parents[2] / "docs" / "scaling.md"
#: What the examples connect to, as the doc spells it; the tests' server replaces it.
DOC_DSN = 'DSN = "host=127.0.0.1 user=postgres dbname=test"'
DOC_URL = 'URL = "postgresql://postgres@127.0.0.1/test"'


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), re.S)


def shown_rows(output: str) -> list[list[str]]:
    """The level rows of a text rendering: the lines between the header and the blank line."""
    table = output.split("\n\n")[1].splitlines()
    assert table[0].split()[0] == "workers"
    return [line.split() for line in table[1:]]


def test_the_shown_output_obeys_littles_law() -> None:
    """Each row the doc shows has N = X·R and U = X·S to its printed precision: a real run's."""
    rows = shown_rows(blocks("text")[0])
    assert [int(row[0]) for row in rows] == [1, 2, 3, 4, 6, 8, 12]
    for row in rows:
        n, x, r_ms, u, s_ms = (float(cell.replace(",", "")) for cell in row[1:6])
        assert n == pytest.approx(x * r_ms / 1e3, abs=0.01 + 0.001 * n)
        assert u == pytest.approx(x * s_ms / 1e3, abs=0.01 + 0.001 * u)
        assert row[6] == "0" and row[8] == "0"


def test_the_examples_run_and_print_what_the_doc_shows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The example, the asyncpg one and the pytest test run as written, printing what is shown."""
    postgres_dsn()
    driver("psycopg_pool")
    driver("asyncpg")
    conninfo = driver("psycopg").conninfo.conninfo_to_dict(PG_DSN)
    url = (
        f"postgresql://{conninfo.get('user', 'postgres')}@{conninfo.get('host', '127.0.0.1')}"
        f":{conninfo.get('port', 5432)}/{conninfo.get('dbname', 'test')}"
    )
    table = f"scaling_doc_stock_{os.getpid()}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("REPORTS", str(tmp_path / "reports"))
    namespace: dict[str, object] = {"__name__": "scaling_doc"}
    printed = []
    python_blocks = blocks("python")
    assert DOC_DSN in python_blocks[0] and DOC_URL in python_blocks[1]
    try:
        for block in python_blocks:
            code = (
                block.replace(DOC_DSN, f"DSN = {PG_DSN!r}")
                .replace(DOC_URL, f"URL = {url!r}")
                .replace("stock", table)
                # Shorter levels: the test checks what runs, not the figures.
                .replace("duration=2.0", "duration=0.3, warmup=0.1")
            )
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                exec(compile(code, str(DOC), "exec"), namespace)
            printed.append(out.getvalue())
        # The pytest example: a test function, called as pytest would.
        test_function = namespace["test_orders_scale"]
        assert callable(test_function)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            test_function()
    finally:
        dbapi = namespace.get("dbapi")
        for name in ("psycopg", "asyncpg"):
            module = namespace.get(name)
            if dbapi is not None and module is not None:
                dbapi.uninstrument(module)  # type: ignore[attr-defined]
        with driver("psycopg").connect(PG_DSN, autocommit=True) as connection:
            connection.execute(f"DROP TABLE IF EXISTS {table}")

    shown = blocks("text")[0]
    output = printed[0]
    assert output.splitlines()[0] == shown.splitlines()[0].replace(
        "2 s each after 0.5 s", "0.3 s each after 0.1 s"
    )
    assert output.splitlines()[2] == shown.splitlines()[2]
    assert [row[0] for row in shown_rows(output)] == [row[0] for row in shown_rows(shown)]
    result = namespace["result"]
    assert isinstance(result, scaling.ScalingResult)
    assert all(level.errors == 0 and level.interval.queries > 0 for level in result.levels)
    if result.model is not None:
        assert "Universal Scalability Law, fitted to 7 points" in output
    assert (tmp_path / "orders.html").read_text().startswith("<!DOCTYPE html>")

    async_result = namespace["async_result"]
    assert isinstance(async_result, scaling.ScalingResult)
    assert [level.workers for level in async_result.levels] == [1, 2, 4, 8]
    assert all(level.errors == 0 and level.interval.queries > 0 for level in async_result.levels)

    reports = tmp_path / "reports"
    assert sorted(path.name for path in reports.iterdir()) == [
        "orders-scaling.html",
        "orders-scaling.json",
    ]
    assert out.getvalue().startswith("Scalability run: 5 levels (1, 2, 4, 8, 12 workers)")
