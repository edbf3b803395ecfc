"""Change markers: validated, bounded, ordered, thread-safe, and usable in a forked child."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator

import pytest

import querymeter
from querymeter import markers


@pytest.fixture(autouse=True)
def clean_markers() -> Iterator[None]:
    """Each test starts and ends with an empty marker log."""
    markers.clear()
    yield
    markers.clear()


def test_mark_records_label_attrs_and_both_clocks() -> None:
    """mark() keeps the label, a read-only copy of the attrs, and the wall and monotonic times."""
    attrs = {"version": "1.2", "replicas": 3, "ratio": 0.5, "canary": True, "note": None}
    wall_before, mono_before = time.time_ns(), time.monotonic_ns()
    marker = querymeter.mark("deploy v1.2", **attrs)
    wall_after, mono_after = time.time_ns(), time.monotonic_ns()
    assert isinstance(marker, querymeter.Marker)
    assert marker.label == "deploy v1.2"
    assert dict(marker.attrs) == attrs
    assert wall_before <= marker.wall_ns <= wall_after
    assert mono_before <= marker.monotonic_ns <= mono_after
    with pytest.raises(TypeError):
        marker.attrs["version"] = "2"  # type: ignore[index]
    assert markers.markers() == [marker]


def test_marker_is_json_and_round_trips() -> None:
    """A marker's as_dict() is JSON, and from_dict() gives back an equal marker."""
    marker = querymeter.mark("config max_connections=200", max_connections=200)
    text = json.dumps(marker.as_dict(), allow_nan=False)
    again = querymeter.Marker.from_dict(json.loads(text))
    assert again == marker
    assert hash(again) == hash(marker)
    assert "config max_connections=200" in str(marker)


@pytest.mark.parametrize("label", [None, 3, b"deploy", ["deploy"]])
def test_a_label_that_is_not_a_str_is_a_type_error(label: object) -> None:
    """A label must be a str."""
    with pytest.raises(TypeError, match="label must be a str"):
        querymeter.mark(label)  # type: ignore[arg-type]


@pytest.mark.parametrize("label", ["", "   ", "x" * (markers.MAX_LABEL_CHARS + 1)])
def test_an_empty_or_overlong_label_is_a_value_error(label: str) -> None:
    """A label must have text, and at most MAX_LABEL_CHARS characters."""
    with pytest.raises(ValueError, match="label"):
        querymeter.mark(label)
    assert markers.markers() == []


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ([1, 2], TypeError),
        ({"a": 1}, TypeError),
        (b"bytes", TypeError),
        (object(), TypeError),
        (float("nan"), ValueError),
        (float("inf"), ValueError),
        ("x" * (markers.MAX_VALUE_CHARS + 1), ValueError),
    ],
)
def test_an_attr_that_is_not_a_json_scalar_is_refused_by_name(
    value: object, error: type[Exception]
) -> None:
    """Attribute values are JSON scalars: the error names the attribute."""
    with pytest.raises(error, match="'release'"):
        querymeter.mark("deploy", release=value)
    assert markers.markers() == []


def test_too_many_attrs_is_a_value_error() -> None:
    """At most MAX_ATTRS attributes."""
    attrs = {f"a{i}": i for i in range(markers.MAX_ATTRS + 1)}
    with pytest.raises(ValueError, match="at most"):
        querymeter.mark("deploy", **attrs)


def test_markers_are_oldest_first_and_since_filters_by_wall_time() -> None:
    """markers() is ordered by wall time; since_wall_ns keeps those at or after it."""
    late = markers.add(querymeter.Marker("late", 3_000, 3))
    early = markers.add(querymeter.Marker("early", 1_000, 1))
    middle = markers.add(querymeter.Marker("middle", 2_000, 2))
    assert markers.markers() == [early, middle, late]
    assert markers.markers(2_000) == [middle, late]
    with pytest.raises(TypeError):
        markers.markers(2.5)  # type: ignore[arg-type]


def test_the_log_is_bounded_and_counts_what_it_dropped() -> None:
    """Past MAX_MARKERS, the oldest markers go and are counted."""
    extra = 7
    for i in range(markers.MAX_MARKERS + extra):
        markers.add(querymeter.Marker(f"m{i}", i, i))
    kept = markers.markers()
    assert len(kept) == markers.MAX_MARKERS
    assert kept[0].label == f"m{extra}"
    assert markers.dropped() == extra


def test_marking_from_many_threads_loses_nothing() -> None:
    """Concurrent marks are all kept."""
    threads_count, each = 8, 100

    def work(n: int) -> None:
        for i in range(each):
            querymeter.mark(f"t{n}", i=i)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    kept = markers.markers()
    assert len(kept) == threads_count * each
    assert {(m.label, m.attrs["i"]) for m in kept} == {
        (f"t{n}", i) for n in range(threads_count) for i in range(each)
    }


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork() is POSIX")
def test_a_child_forked_while_the_log_is_locked_can_mark() -> None:
    """The log's lock is renewed in a forked child, which keeps the parent's markers."""
    parent_marker = querymeter.mark("before fork")
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with markers._lock:
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait(10)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            querymeter.mark("in child")
            labels = [m.label for m in markers.markers()]
            code = 0 if labels == [parent_marker.label, "in child"] else 2
        finally:
            os._exit(code)
    release.set()
    holder.join()
    deadline = time.monotonic() + 10
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the child hung on the markers' lock")
        time.sleep(0.01)
    assert os.waitstatus_to_exitcode(status) == 0
