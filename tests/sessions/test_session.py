"""Profiling sessions: the leash, focus, max_samples, one per meter, the kill switch,
the report (figures, statements, waits, samples, observer effect, environment), saving,
loading and comparing; on both cores."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import querymeter
from querymeter import dbapi
from querymeter.meter import Meter as MeterType


@pytest.fixture
def meter(Meter: type[MeterType]) -> Iterator[MeterType]:
    meter = Meter()
    dbapi.instrument(sqlite3, meter=meter)
    yield meter
    dbapi.uninstrument(sqlite3)
    querymeter.enable()


def workload(connection: sqlite3.Connection, inserts: int = 20) -> None:
    connection.execute("create table if not exists items (id integer, owner text)")
    for i in range(inserts):
        connection.execute("insert into items values (?, ?)", (i, "ann"))
    connection.execute("select * from items where owner = 'ann'").fetchall()


def test_a_session_reports_what_ran_in_it(meter: MeterType) -> None:
    connection = sqlite3.connect(":memory:")
    connection.execute("select 'before'")
    with querymeter.profile(30, objective="why slow?", sample=1.0, meter=meter) as session:
        assert session.running
        workload(connection)
    assert not session.running
    report = session.report()
    assert report.objective == "why slow?" and report.ended_by == "stop"
    assert report.figures["queries"] == 22 and report.figures["errors"] == 0
    by_calls = report.top(1, by="calls")[0]
    assert (by_calls["fingerprint"], by_calls["calls"], by_calls["rows"]) == (
        "insert into items values(?+)",
        20,
        20,
    )
    assert sum(s["calls"] for s in report.statements) == 22
    assert sum(s["share"] for s in report.statements) == pytest.approx(1.0)
    assert [s["fingerprint"] for s in report.top(3, by="total")] == [
        s["fingerprint"] for s in report.statements
    ]
    assert len(report.samples) == 22 and report.samples[0].sql.startswith("create table")
    assert report.slowest(1)[0].duration_ns == max(s.duration_ns for s in report.samples)
    assert report.started <= report.ended
    effect = report.observer_effect
    assert effect["ns_per_query"] > 0 and "µs/query" in effect["summary"]
    versions = report.environment["versions"]
    assert versions["python"] and versions["sqlite3"].startswith("SQLite")
    assert report.settings["sample"] == 1.0 and report.notes == []
    assert session.stop() is report, "stopping again gives the same report"


def test_the_leash_ends_a_session_left_running(meter: MeterType) -> None:
    table = meter.enable_statements()
    session = querymeter.profile(0.2, meter=meter).start()
    time.sleep(0.6)
    assert not session.running
    assert session.report().ended_by == "duration"
    assert meter.statements is table and meter.sampling is None, "the meter's own settings"
    sqlite3.connect(":memory:").execute("select 1")
    assert session.report().figures["queries"] == 0


def test_the_meters_own_settings_are_untouched(meter: MeterType) -> None:
    with querymeter.profile(10, sample=1.0, meter=meter):
        assert meter.statements is None and meter.sampling is None
        sqlite3.connect(":memory:").execute("select 1")
    assert meter.statements is None and meter.sampling is None
    assert meter.samples() == []


def test_focus_captures_only_the_scopes_it_names(meter: MeterType) -> None:
    connection = sqlite3.connect(":memory:")
    with querymeter.profile(10, sample=1.0, focus={"user": "ann"}, meter=meter) as session:
        with querymeter.scope(user="ann"):
            connection.execute("select 'ann'")
        with querymeter.scope(user="bob"):
            connection.execute("select 'bob'").fetchall()
            connection.execute("select 'bob'").fetchall()
        connection.execute("select 'nobody'")
    report = session.report()
    assert report.figures["queries"] == 4, "the counters stay global"
    assert [(s["sample_sql"], s["calls"]) for s in report.statements] == [("select 'ann'", 1)]
    assert [dict(s.tags) for s in report.samples] == [{"user": "ann"}]


def test_focus_by_predicate(meter: MeterType) -> None:
    connection = sqlite3.connect(":memory:")

    def slow_routes(tags: object) -> bool:
        return str(getattr(tags, "get", lambda _: "")("route")).startswith("/report")

    with querymeter.profile(10, sample=1.0, focus=slow_routes, meter=meter) as session:
        with querymeter.scope(route="/report/nightly"):
            connection.execute("select 1")
        with querymeter.scope(route="/home"):
            connection.execute("select 2")
    assert [s.sql for s in session.report().samples] == ["select 1"]


def test_max_samples_ends_detailed_capture_and_says_so(meter: MeterType) -> None:
    connection = sqlite3.connect(":memory:")
    with querymeter.profile(10, sample=1.0, max_samples=5, meter=meter) as session:
        for i in range(12):
            connection.execute(f"select {i}")
    report = session.report()
    assert len(report.samples) == 5
    assert report.statements[0]["calls"] == 12, "statements went on"
    assert any("max_samples (5) reached" in note for note in report.notes)


def test_one_session_at_a_time_per_meter(meter: MeterType, Meter: type[MeterType]) -> None:
    with querymeter.profile(10, objective="first", meter=meter):
        with pytest.raises(RuntimeError, match=r"already runs a profiling session.*'first'"):
            querymeter.profile(10, meter=meter).start()
        with querymeter.profile(10, meter=Meter()):
            pass  # another meter: fine
    with querymeter.profile(10, meter=meter):
        pass  # the first has ended


def test_the_kill_switch_ends_sessions(meter: MeterType) -> None:
    session = querymeter.profile(10, meter=meter).start()
    querymeter.disable()
    assert not session.running and session.report().ended_by == "disable"


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"duration": 0}, ValueError, "duration must be more than 0"),
        ({"duration": -1}, ValueError, "duration must be more than 0"),
        ({"duration": "1m"}, TypeError, "duration must be seconds"),
        ({"sample": 1.5}, ValueError, "sample must be from 0 to 1"),
        ({"sample": -0.1}, ValueError, "sample must be from 0 to 1"),
        ({"max_samples": 0}, ValueError, "max_samples must be at least 1"),
        ({"focus": {}}, ValueError, "focus must name at least one tag"),
        ({"focus": {"not a tag": 1}}, ValueError, "focus keys must be tag names"),
        ({"focus": {"n_plus_one": 1}}, ValueError, "focus keys must be tag names"),
        ({"focus": ["user"]}, TypeError, "focus must be a mapping"),
        ({"slower_than": -1}, ValueError, "slower_than"),
        ({"objective": 42}, TypeError, "objective must be a str"),
    ],
)
def test_bad_input_is_refused_at_the_call(
    meter: MeterType, kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        querymeter.profile(meter=meter, **kwargs)  # type: ignore[arg-type]


def test_save_load_and_the_formats(meter: MeterType, tmp_path: Path) -> None:
    connection = sqlite3.connect(":memory:")
    with querymeter.profile(10, objective="a <b> & 'c'", sample=1.0, meter=meter) as session:
        workload(connection, 3)
        connection.execute("select '|pipe|' as x")
    report = session.report()
    saved = report.save(tmp_path / "r.json")
    loaded = querymeter.Report.load(saved)
    assert loaded.as_dict() == report.as_dict() == json.loads(saved.read_text())
    assert [s.sql for s in loaded.samples] == [s.sql for s in report.samples]
    markdown = report.save(tmp_path / "r.md").read_text()
    assert "a \\<b\\> & 'c'" in markdown and "`insert into items values(?+)`" in markdown
    assert "\\|pipe\\|" in markdown
    page = report.save(tmp_path / "r.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "a &lt;b&gt; &amp; &#x27;c&#x27;" in page
    assert "http://" not in page and "https://" not in page and "<script" not in page
    with pytest.raises(ValueError, match="cannot tell the format"):
        report.save(tmp_path / "r.txt")
    with pytest.raises(OSError):
        report.save(tmp_path / "missing" / "r.json")
    (tmp_path / "other.json").write_text('{"format": 99}')
    with pytest.raises(ValueError, match="not a querymeter session report"):
        querymeter.Report.load(tmp_path / "other.json")


def test_compare_names_what_got_slower_or_more_frequent(meter: MeterType) -> None:
    def session_of(slow_ms: float, calls: int) -> querymeter.Report:
        with querymeter.profile(10, meter=meter) as session:
            for _ in range(calls):
                with meter.track("select * from orders where id = 1"):
                    time.sleep(slow_ms / 1000)
            with meter.track("select steady"):
                time.sleep(0.002)
        return session.report()

    baseline = session_of(1, 5)
    with querymeter.profile(10, meter=meter) as session:
        for _ in range(5):
            with meter.track("select * from orders where id = 1"):
                time.sleep(0.004)
        with meter.track("select steady"):
            time.sleep(0.002)
        with meter.track("select new_one"):
            pass
    later = session.report()
    comparison = later.compare(baseline, threshold=0.5)
    assert [c.fingerprint for c in comparison.slower] == ["select * from orders where id = ?"]
    assert comparison.slower[0].ratio is not None and comparison.slower[0].ratio > 2
    assert comparison.new == ("select new_one",) and comparison.gone == ()
    with pytest.raises(TypeError, match="baseline must be a Report"):
        later.compare("yesterday")  # type: ignore[arg-type]


def test_where_the_time_went_with_scopes(meter: MeterType) -> None:
    with querymeter.profile(10, meter=meter) as session, querymeter.scope(job="busy-app"):
        with meter.track("select 1"):
            time.sleep(0.01)
        time.sleep(0.05)  # the application's own work
    client = session.report().waits["client"]
    parts = {part["name"]: part["ns"] for part in client["parts"]}
    assert client["scopes"] == 1
    assert parts["the database (queries)"] >= 10_000_000
    assert parts["itself (the application's own time)"] >= 45_000_000
    assert "itself" in client["verdict"]


def test_pool_waits_are_reported(meter: MeterType) -> None:
    sqlalchemy = pytest.importorskip("sqlalchemy")
    import querymeter.sqlalchemy as qs

    engine = sqlalchemy.create_engine(
        "sqlite:///:memory:", poolclass=sqlalchemy.pool.QueuePool, pool_size=1, max_overflow=0
    )
    qs.instrument(engine, meter=meter)
    try:
        with querymeter.profile(10, meter=meter) as session:
            held = engine.connect()
            waiter = threading.Thread(target=lambda: engine.connect().close())
            waiter.start()
            time.sleep(0.1)
            held.close()
            waiter.join()
        parts = {p["name"]: p["ns"] for p in session.report().waits["client"]["parts"]}
        assert parts["a pool connection"] >= 80_000_000
    finally:
        qs.uninstrument(engine)


def test_overhead_is_measured_apart_from_the_application(meter: MeterType) -> None:
    """overhead() times its own SQLite connections: the application's meter does not move,
    and the figure is kept (the same on a second call)."""
    before = meter.snapshot().queries
    first = querymeter.overhead(meter)
    assert first >= 0 and querymeter.overhead(meter) == first
    meter.enable_statements()
    meter.enable_sampling(rate=1.0)
    with_everything = querymeter.overhead(meter)
    assert with_everything > first, "capturing every query costs more than counting"
    assert meter.snapshot().queries == before


def test_a_forked_child_has_no_session(meter: MeterType) -> None:
    """The child of a fork during a session stops observing for it (its timer did not
    survive), and can start a session of its own."""
    import os

    session = querymeter.profile(10, sample=1.0, meter=meter).start()
    try:
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                with meter.track("select 1"):
                    pass
                with pytest.raises(RuntimeError, match="parent process"):
                    session.report()
                with querymeter.profile(10, meter=meter) as own, meter.track("select 2"):
                    pass
                status = 0 if own.report().figures["queries"] == 1 else 1
            finally:
                os._exit(status)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        report = session.stop()
    assert report.figures["queries"] == 0, "the child's queries are not the parent's"


def test_the_report_shows_the_markers_made_during_the_session(
    meter: MeterType, tmp_path: Path
) -> None:
    """Markers made between a session's start and end are in its report, in every format;
    those made before or after it are not."""
    querymeter.markers.clear()
    try:
        querymeter.mark("before the session")
        connection = sqlite3.connect(":memory:")
        with querymeter.profile(10, meter=meter) as session:
            workload(connection, 2)
            during = querymeter.mark("deploy v1.2", version="1.2", canary=True)
            assert [m.label for m in session.report().markers] == ["deploy v1.2"]
            workload(connection, 2)
        querymeter.mark("after the session")
        report = session.report()
        assert report.markers == [during]
        assert report.started.timestamp() * 1e9 <= during.wall_ns
        assert during.wall_ns <= report.ended.timestamp() * 1e9 + 1000
        loaded = querymeter.Report.load(report.save(tmp_path / "r.json"))
        assert loaded.markers == [during]
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(during.wall_ns // 10**9))
        markdown = report.save(tmp_path / "r.md").read_text()
        assert "## Change markers" in markdown
        assert f"| {when} | deploy v1.2 | version='1.2', canary=True |" in markdown
        page = report.save(tmp_path / "r.html").read_text()
        assert "<h2>Change markers</h2>" in page
        assert (
            f"<td>{when}</td><td>deploy v1.2</td><td>version=&#x27;1.2&#x27;, canary=True</td>"
            in page
        )
        for text in (markdown, page):
            assert "before the session" not in text and "after the session" not in text
    finally:
        querymeter.markers.clear()


def test_a_report_saved_before_reports_kept_markers_still_loads_and_renders(
    meter: MeterType, tmp_path: Path
) -> None:
    """A saved report without markers reads back with none, and renders without the section."""
    with querymeter.profile(10, meter=meter) as session:
        workload(sqlite3.connect(":memory:"), 1)
    data = session.report().as_dict()
    del data["markers"]
    older = querymeter.Report(data)
    assert older.markers == []
    assert "Change markers" not in older.save(tmp_path / "r.md").read_text()
