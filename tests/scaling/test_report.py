"""A real scalability run as text, JSON and HTML: each figure is the level's Interval's."""

from __future__ import annotations

import html.parser
import itertools
import json
import math
import queue
import re
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import querymeter.dbapi as dbapi
from querymeter import report, scaling
from querymeter.readings import Interval

from ..conftest import load_meter_class

LEVELS = (1, 2, 3)
#: Every this many calls, one queries a table that does not exist: an error of the driver's.
FAILING_EVERY = 7


@pytest.fixture(scope="module")
def result(implementation: str, tmp_path_factory: pytest.TempPathFactory) -> scaling.ScalingResult:
    """A short run of sqlite3, a connection per worker, every seventh call's query failing."""
    meter = load_meter_class(implementation)()
    path = tmp_path_factory.mktemp("scaling-report") / "shop.db"
    with sqlite3.connect(path, isolation_level=None) as connection:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("CREATE TABLE item (id INTEGER PRIMARY KEY, price INTEGER)")
        connection.executemany("INSERT INTO item VALUES (?, ?)", [(n, n * 3) for n in range(500)])
    connection.close()
    numbers = itertools.count(1)
    lock = threading.Lock()

    @contextmanager
    def connections(workers: int) -> Iterator[queue.SimpleQueue[sqlite3.Connection]]:
        idle: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        opened = [sqlite3.connect(path, check_same_thread=False) for _ in range(workers)]
        for connection in opened:
            idle.put(connection)
        try:
            yield idle
        finally:
            for connection in opened:
                connection.close()

    def workload(idle: queue.SimpleQueue[sqlite3.Connection]) -> None:
        with lock:
            number = next(numbers)
        connection = idle.get()
        try:
            table = "missing" if number % FAILING_EVERY == 0 else "item"
            connection.execute(f"SELECT sum(price) FROM {table} WHERE id < ?", (250,)).fetchall()
        finally:
            idle.put(connection)

    dbapi.instrument(sqlite3, meter=meter)
    try:
        return scaling.run(
            workload, levels=LEVELS, duration=0.3, warmup=0.05, meter=meter, setup=connections
        )
    finally:
        dbapi.uninstrument(sqlite3)


def figures(interval: Interval) -> dict[str, float | None]:
    """N, X, R and S (ms), U, worked out here from the interval's raw counters."""
    seconds = interval.duration_ns / 1e9
    queries = interval.queries
    return {
        "N": interval.total_ns / interval.duration_ns,
        "X": queries / seconds,
        "R": interval.total_ns / queries / 1e6 if queries else None,
        "U": interval.busy_ns / interval.duration_ns,
        "S": interval.busy_ns / queries / 1e6 if queries else None,
    }


def number(cell: str) -> float | None:
    """A printed figure back as a number; a dash (the text's or the page's) is undefined."""
    cell = cell.strip()
    return None if cell in ("-", "\N{EN DASH}") else float(cell.replace(",", ""))


def close_to(printed: float | None, exact: float | None, decimals: int) -> bool:
    """Whether ``printed`` is ``exact`` rounded to ``decimals`` places."""
    if printed is None or exact is None:
        return printed is exact
    return abs(printed - exact) <= 0.5 * 10.0**-decimals + 1e-9 * abs(exact)


#: The decimals each figure is printed with, in the text and the HTML table alike.
DECIMALS = {"N": 2, "X": 0, "R": 3, "U": 2, "S": 3}


def test_the_run_gave_levels_with_queries_and_errors(result: scaling.ScalingResult) -> None:
    """The run behind the report tests: each level completed queries, and some of them failed."""
    assert [level.workers for level in result.levels] == list(LEVELS)
    for level in result.levels:
        assert level.interval.queries > FAILING_EVERY
        assert level.interval.errors > 0 and level.errors > 0
        assert level.first_error is not None and "no such table: missing" in level.first_error
    assert result.model is not None


def test_the_text_shows_each_levels_interval(result: scaling.ScalingResult) -> None:
    """Each row of the text table is the level's workers, N, X, R, U, S and its two error counts."""
    text = result.render("text")
    assert text == report.render_scaling_text(result)
    lines = text.splitlines()
    assert (
        lines[0]
        == "Scalability run: 3 levels (1, 2, 3 workers), 0.3 s each after 0.05 s of warm-up"
    )
    assert lines[2].split() == [
        "workers", "N", "X", "(queries/s)", "R", "(ms)", "U", "S", "(ms)", "failed", "calls",
        "raised",
    ]  # fmt: skip
    rows = [line for line in lines[3:] if re.match(r"\s+\d+\s", line)]
    assert len(rows) == len(result.levels)
    for row, level in zip(rows, result.levels, strict=True):
        cells = row.split()
        assert int(cells[0]) == level.workers
        expected = figures(level.interval)
        for name, cell in zip(("N", "X", "R", "U", "S"), cells[1:6], strict=True):
            assert close_to(number(cell), expected[name], DECIMALS[name]), (name, cell, expected)
        assert [int(cell.replace(",", "")) for cell in cells[6:]] == [
            level.interval.errors,
            level.calls,
            level.errors,
        ]
    # Under each row, its first call that raised.
    raised = [line for line in lines if "! the first call that raised: " in line]
    assert len(raised) == len(result.levels)
    assert all("no such table: missing" in line for line in raised)
    assert max(len(line) for line in lines) <= 88
    # Then the model, read in the verdict's words (wrapped to the terminal).
    assert " ".join(result.verdict.split()) in " ".join(text.split())


def test_the_json_round_trips_every_counter_and_figure(result: scaling.ScalingResult) -> None:
    """The JSON parses, and holds each level's exact counters, figures, calls and the model."""
    document = json.loads(result.render("json"))
    assert document == report.scaling_document(result)
    assert document["duration_s"] == 0.3 and document["warmup_s"] == 0.05
    assert len(document["levels"]) == len(result.levels)
    for saved, level in zip(document["levels"], result.levels, strict=True):
        interval = level.interval
        assert saved["workers"] == level.workers
        for counter in ("duration_ns", "queries", "errors", "total_ns", "busy_ns"):
            assert saved[counter] == getattr(interval, counter)
            assert type(saved[counter]) is int
        # Floats come back bit for bit, and agree with the counters.
        assert saved["concurrency"] == interval.concurrency
        assert saved["throughput"] == interval.throughput
        assert saved["response_time_s"] == interval.response_time
        assert saved["utilization"] == interval.utilization
        assert saved["service_time_s"] == interval.service_time
        expected = figures(interval)
        assert saved["concurrency"] == pytest.approx(expected["N"], rel=1e-12)
        assert saved["throughput"] == pytest.approx(expected["X"], rel=1e-12)
        assert saved["response_time_s"] * 1e3 == pytest.approx(expected["R"], rel=1e-12)
        assert saved["calls"] == level.calls
        assert saved["calls_raised"] == level.errors
        assert saved["first_error"] == level.first_error
    model = result.model
    assert model is not None
    saved_model = document["model"]
    assert (saved_model["sigma"], saved_model["kappa"], saved_model["lambda"]) == (
        model.sigma,
        model.kappa,
        model.lam,
    )
    assert saved_model["r_squared"] == model.r_squared
    assert saved_model["n_points"] == len(LEVELS)
    peak = saved_model["peak_concurrency"]
    assert peak == (None if math.isinf(model.peak_concurrency) else model.peak_concurrency)
    assert document["fit"]["summary"] == result.verdict
    assert document["fit"]["describes_data"] == result.describes_data


class Page(html.parser.HTMLParser):
    """What a test reads of a page: its tags, the first table's cells, and the charts' points."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str | None]] = []
        self.rows: list[list[str]] = []
        self._tables = 0
        self._cell: list[str] | None = None
        self._titles: list[str] = []
        self._in_circle_title = False
        self._in_circle = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes += attrs
        if tag == "table":
            self._tables += 1
        elif tag == "tr" and self._tables == 1:
            self.rows.append([])
        elif tag == "td" and self._tables == 1:
            self._cell = []
        elif tag == "circle":
            self._in_circle = True
        elif tag == "title" and self._in_circle:
            self._in_circle_title = True
            self._titles.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None
        elif tag == "title":
            self._in_circle_title = False
        elif tag == "circle":
            self._in_circle = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._in_circle_title:
            self._titles[-1] += data

    def measured_points(self) -> list[tuple[float, float]]:
        """The (x, y) of every point labelled "measured", in the order drawn."""
        points = []
        for title in self._titles:
            found = re.fullmatch(r"measured: \(([\d.,e+-]+), ([\d.,e+-]+)\)", title)
            if found:
                points.append((number(found[1]) or 0.0, number(found[2]) or 0.0))
        return points


def test_the_html_is_self_contained_with_the_table_and_two_charts(
    result: scaling.ScalingResult,
) -> None:
    """The page fetches nothing, its table is each level's Interval, and both charts are there."""
    page_text = result.render("html")
    assert page_text == report.render_scaling_html(result)
    page = Page()
    page.feed(page_text)
    page.close()
    assert "script" not in page.tags and "img" not in page.tags and "link" not in page.tags
    assert not [value for name, value in page.attributes if name in ("src", "href")]
    assert re.findall(r"https?://[^\"' ]+", page_text) == ["http://www.w3.org/2000/svg"] * 2
    # The only url() are the charts' own clip paths, in the page.
    assert {link for link in re.findall(r"url\(([^)]*)\)", page_text)} <= {
        "#throughput-plot",
        "#response-time-plot",
    }
    assert page_text.count("<svg") == 2 and page_text.count("</svg>") == 2
    assert 'aria-label="Throughput against concurrency"' in page_text
    assert 'aria-label="Response time against concurrency"' in page_text

    rows = [row for row in page.rows if row]
    assert len(rows) == len(result.levels)
    for cells, level in zip(rows, result.levels, strict=True):
        assert int(cells[0]) == level.workers
        expected = figures(level.interval)
        for name, cell in zip(("N", "X", "R", "U", "S"), cells[1:6], strict=True):
            assert close_to(number(cell), expected[name], DECIMALS[name]), (name, cell, expected)
        assert [int(cell.replace(",", "")) for cell in cells[6:]] == [
            level.interval.queries,
            level.interval.errors,
            level.calls,
            level.errors,
        ]

    # The charts' measured points: (N, X), then (N, R in ms), to 6 significant digits.
    points = page.measured_points()
    assert len(points) == 2 * len(result.levels)
    for (n, x), (n_again, r_ms), level in zip(
        points[: len(LEVELS)], points[len(LEVELS) :], result.levels, strict=True
    ):
        expected = figures(level.interval)
        assert n == pytest.approx(expected["N"], rel=1e-5) and n_again == n
        assert x == pytest.approx(expected["X"], rel=1e-5, abs=0.5)
        assert r_ms == pytest.approx(expected["R"], rel=1e-5)
    assert " ".join(result.verdict.split()) in " ".join(page_text.split()).replace("&#x27;", "'")


def test_without_a_model_every_format_says_why(result: scaling.ScalingResult) -> None:
    """Two levels fit no model: the text, the JSON and the page all give the reason."""
    two = scaling.fit(result.levels[:2], duration=result.duration_s, warmup=result.warmup_s)
    assert two.model is None
    reason = "2 levels completed queries, and a model needs at least 3"
    assert two.fit_problem == reason
    text = two.render("text")
    assert "No scalability model." in text
    assert reason in " ".join(text.split())
    document = json.loads(two.render("json"))
    assert document["model"] is None
    assert reason in document["fit"]["summary"]
    page = two.render("html")
    assert reason in page and page.count("<svg") == 2


def test_save_chooses_the_format_by_the_suffix(
    result: scaling.ScalingResult, tmp_path: Path
) -> None:
    """save() writes the text, JSON or HTML by the suffix, each ending with a newline."""
    for suffix, format in ((".txt", "text"), (".json", "json"), (".HTML", "html")):
        written = result.save(tmp_path / f"run{suffix}")
        assert written == tmp_path / f"run{suffix}"
        content = written.read_text(encoding="utf-8")
        assert content.rstrip("\n") == result.render(format).rstrip("\n")
        assert content.endswith("\n") and not content.endswith("\n\n")
    assert json.loads((tmp_path / "run.json").read_text())["levels"][0]["workers"] == 1
    assert result.save(str(tmp_path / "again.json")).is_file()


def test_an_unknown_format_or_suffix_is_refused(
    result: scaling.ScalingResult, tmp_path: Path
) -> None:
    """render() and save() name the formats they know when given another."""
    with pytest.raises(ValueError, match="format must be one of 'text', 'json', 'html', got 'md'"):
        result.render("md")
    with pytest.raises(ValueError, match=r"format must be one of .* got None"):
        result.render(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"cannot tell the format of .*run\.pdf.*\.txt, \.json"):
        result.save(tmp_path / "run.pdf")
    with pytest.raises(ValueError, match="cannot tell the format"):
        result.save(tmp_path / "run")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OSError):
        result.save(tmp_path / "no" / "such" / "folder.json")
