"""Dumps: JSON that reads back exactly, a self-contained HTML timeline, and dumps on a signal."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

import querymeter
from querymeter import markers
from querymeter.meter import Meter as MeterType
from querymeter.recorder import FlightRecorder, load_dump

from ..conftest import FakeClock
from .test_recorder import run_second, simulate


@pytest.fixture(autouse=True)
def clean_markers() -> Iterator[None]:
    """Each test starts with an empty marker log."""
    markers.clear()
    yield
    markers.clear()


@pytest.fixture
def recorded(fake_meter: MeterType, clock: FakeClock) -> FlightRecorder:
    """A recorder of 150 simulated seconds of statements, with a marker in the middle."""
    fake_meter.enable_statements()
    recorder = FlightRecorder(fake_meter, ((1.0, 900), (60.0, 1440)), statements_per_step=3)
    simulate(fake_meter, clock, recorder, 75)
    steps = recorder.timeline()
    markers.add(
        querymeter.Marker(
            "deploy <v1.2>", recorder.step_wall_ns(steps[-1]), 0, {"version": "1.2", "n": 3}
        )
    )
    recorder.take()
    for second in range(75, 150):
        run_second(fake_meter, clock, second)
        recorder.take()
    return recorder


def test_a_json_dump_reads_back_exactly(recorded: FlightRecorder, tmp_path: Path) -> None:
    """load_dump() gives back the same Intervals, statements, wall times and markers."""
    path = recorded.dump(tmp_path / "evidence.json")
    assert path == tmp_path / "evidence.json"
    document = json.loads(path.read_text())
    assert document["format"] == "querymeter-flight-recorder"
    assert document["version"] == 1
    loaded = load_dump(path)
    assert loaded.resolutions == recorded.resolutions
    for seconds, _ in recorded.resolutions:
        intervals = recorded.timeline(resolution=seconds)
        assert loaded.timelines[seconds] == intervals
        assert loaded.step_wall_ns[seconds] == [recorded.step_wall_ns(i) for i in intervals]
        for got, want in zip(
            loaded.statement_timelines[seconds],
            recorded.statement_timeline(resolution=seconds),
            strict=True,
        ):
            assert got is not None and want is not None
            assert got.statements == want.statements
            assert got.rest == want.rest
            assert (got.calls, got.errors, got.total_ns) == (want.calls, want.errors, want.total_ns)
            assert got.rest_statements == want.rest_statements
    assert loaded.markers == recorded.markers()
    assert [m.label for m in loaded.markers] == ["deploy <v1.2>"]
    # The figures are there for readers without querymeter, equal to the laws'.
    step = document["resolutions"][0]["steps"][-1]
    assert step["figures"]["throughput"] == recorded.timeline()[-1].throughput
    worst = document["worst_step"]
    assert worst["seconds"] == 60.0
    minutes = recorded.timeline(resolution=60.0)
    assert worst["later"]["total_ns"] - worst["earlier"]["total_ns"] == max(
        m.total_ns for m in minutes
    )


def test_a_dump_of_an_empty_recorder_is_valid(fake_meter: MeterType, tmp_path: Path) -> None:
    """A recorder without a step yet dumps an empty timeline, in both formats."""
    recorder = FlightRecorder(fake_meter)
    assert load_dump(recorder.dump(tmp_path / "empty.json")).timelines[1.0] == []
    page = recorder.dump(tmp_path / "empty.html").read_text()
    assert "No step recorded yet" in page


def test_the_html_timeline_is_self_contained_with_charts_markers_and_the_worst_minute(
    recorded: FlightRecorder, tmp_path: Path
) -> None:
    """The page has five charts per resolution, the marker as a line, the worst minute's top."""
    page = recorded.dump(tmp_path / "timeline.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    # Self-contained: nothing fetched.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<script" not in page
    assert page.count("<svg") == 5 * len(recorded.resolutions)
    for title in ("Throughput", "Concurrency", "Response time", "Utilization", "Errors"):
        assert f"{title} every 1 s" in page
        assert f"{title} every 60 s" in page
    # The marker: escaped, in the table and as a dashed vertical line on the charts.
    assert "deploy &lt;v1.2&gt;" in page
    assert "<v1.2>" not in page
    assert page.count('<g class="marker">') >= 5
    worst = recorded.statement_timeline(resolution=60.0)
    minutes = recorded.timeline(resolution=60.0)
    index = max(range(len(minutes)), key=lambda i: minutes[i].total_ns)
    statements = worst[index]
    assert statements is not None
    for stats in statements.statements:
        assert stats.statement_id in page


def test_dump_refuses_an_unknown_suffix_or_a_missing_directory(
    recorded: FlightRecorder, tmp_path: Path
) -> None:
    """dump() writes .json or .html into an existing directory."""
    with pytest.raises(ValueError, match=r"\.json or \.html"):
        recorded.dump(tmp_path / "evidence.txt")
    with pytest.raises(ValueError, match="not an existing directory"):
        recorded.dump(tmp_path / "missing" / "evidence.json")
    assert list(tmp_path.iterdir()) == []


def test_load_dump_refuses_other_files(tmp_path: Path) -> None:
    """load_dump() names a file that is not a recorder dump."""
    other = tmp_path / "other.json"
    other.write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="not a querymeter flight recorder dump"):
        load_dump(other)


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="SIGUSR1 is POSIX")
def test_a_signal_dumps_evidence_and_the_process_carries_on(
    Meter: type[MeterType], tmp_path: Path
) -> None:
    """os.kill(getpid(), SIGUSR1) writes a JSON and an HTML dump, and chains the old handler."""
    meter = Meter()
    meter.enable_statements()
    received: list[int] = []

    def previous(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    original = signal.signal(signal.SIGUSR1, previous)
    try:
        recorder = FlightRecorder(meter, ((0.05, 100),))
        with recorder:
            for _ in range(50):
                with meter.track("SELECT 1"):
                    pass
            deadline = time.monotonic() + 20
            while len(recorder.timeline()) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            querymeter.mark("before the signal")
            recorder.dump_on_signal(signal.SIGUSR1, tmp_path)
            os.kill(os.getpid(), signal.SIGUSR1)
            deadline = time.monotonic() + 20
            while len(list(tmp_path.glob("querymeter-*"))) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert recorder.running
        written = sorted(p.suffix for p in tmp_path.glob("querymeter-*"))
        assert written == [".html", ".json"]
        assert received == [signal.SIGUSR1]
        (json_path,) = tmp_path.glob("querymeter-*.json")
        assert json_path.name.startswith(f"querymeter-{os.getpid()}-")
        loaded = load_dump(json_path)
        assert loaded.timelines[0.05]
        assert [m.label for m in loaded.markers] == ["before the signal"]
    finally:
        signal.signal(signal.SIGUSR1, original)


def test_dump_on_signal_off_the_main_thread_is_a_clear_error(
    fake_meter: MeterType, tmp_path: Path
) -> None:
    """Only the main thread may install a signal handler: the error says so."""
    recorder = FlightRecorder(fake_meter)
    errors: list[BaseException] = []

    def install() -> None:
        try:
            recorder.dump_on_signal(signal.SIGUSR1, tmp_path)
        except BaseException as exc:  # handed to the test's thread
            errors.append(exc)

    thread = threading.Thread(target=install)
    thread.start()
    thread.join()
    assert len(errors) == 1
    assert isinstance(errors[0], RuntimeError)
    assert "main thread" in str(errors[0])


def test_dump_on_signal_checks_its_directory(fake_meter: MeterType, tmp_path: Path) -> None:
    """The directory must exist when the handler is installed."""
    recorder = FlightRecorder(fake_meter)
    with pytest.raises(ValueError, match="not an existing directory"):
        recorder.dump_on_signal(signal.SIGUSR1, tmp_path / "missing")
    with pytest.raises(TypeError, match="signal number"):
        recorder.dump_on_signal("SIGUSR1", tmp_path)  # type: ignore[arg-type]
