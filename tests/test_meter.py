"""The Meter API: tracked functions sync and async, the default meter, fork."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Generator

import pytest

import querymeter
from querymeter.meter import Meter as MeterType
from querymeter.meter import meter_class

from .conftest import FakeClock


def test_tracked_counts_each_call_and_returns_its_result(
    fake_meter: MeterType, clock: FakeClock
) -> None:
    """Each call of a tracked function is one query; its result is returned untouched."""
    result = object()

    @fake_meter.tracked
    def query(value: int, *, scale: int = 1) -> tuple[int, object]:
        clock.advance(5)
        return value * scale, result

    assert query(3, scale=2) == (6, result)
    assert query(4) == (4, result)
    snap = fake_meter.snapshot()
    assert (snap.queries, snap.errors, snap.total_ns, snap.concurrency) == (2, 0, 10, 0)


def test_tracked_passes_the_same_exception_with_its_traceback(fake_meter: MeterType) -> None:
    """A tracked function's exception reaches the caller as the same object, as an error."""
    raised = LookupError("missing")

    @fake_meter.tracked
    def query() -> None:
        raise raised

    with pytest.raises(LookupError) as caught:
        query()
    assert caught.value is raised
    assert caught.traceback[-1].name == "query"
    snap = fake_meter.snapshot()
    assert (snap.queries, snap.errors, snap.concurrency) == (1, 1, 0)


def test_tracked_keeps_the_function_metadata(fake_meter: MeterType) -> None:
    """A tracked function keeps its name, docstring, signature and __wrapped__."""

    def query(sql: str, params: tuple[int, ...] = ()) -> str:
        """Run one statement."""
        return sql

    tracked = fake_meter.tracked(query)
    assert tracked.__name__ == "query"
    assert tracked.__doc__ == "Run one statement."
    assert tracked.__wrapped__ is query  # type: ignore[attr-defined]
    assert inspect.signature(tracked) == inspect.signature(query)


def test_tracked_methods_bind_like_functions(fake_meter: MeterType) -> None:
    """A tracked function set as a class attribute receives the instance first."""

    class Cursor:
        def execute(self, sql: str) -> tuple[Cursor, str]:
            return self, sql

        execute_counted = fake_meter.tracked(execute)

    cursor = Cursor()
    assert cursor.execute_counted("SELECT 1") == (cursor, "SELECT 1")
    bound = cursor.execute_counted
    assert bound("SELECT 2") == (cursor, "SELECT 2")
    assert Cursor.execute_counted(cursor, "SELECT 3") == (cursor, "SELECT 3")
    assert fake_meter.snapshot().queries == 3


def test_tracked_passes_arguments_unconsumed(fake_meter: MeterType) -> None:
    """An iterator argument reaches the function unconsumed."""
    seen: list[int] = []

    @fake_meter.tracked
    def executemany(rows: object) -> None:
        seen.extend(rows)  # type: ignore[call-overload]

    executemany(n for n in range(3))
    assert seen == [0, 1, 2]


def test_tracking_a_generator_function_is_refused(fake_meter: MeterType) -> None:
    """Generator functions raise TypeError: the call is not where their work happens."""

    def rows() -> object:
        yield 1

    async def stream() -> object:
        yield 1

    with pytest.raises(TypeError, match="generator function"):
        fake_meter.tracked(rows)
    with pytest.raises(TypeError, match="generator function"):
        fake_meter.tracked(stream)


def test_tracking_something_not_callable_is_refused(fake_meter: MeterType) -> None:
    """Tracking a non-callable raises TypeError naming its type."""
    with pytest.raises(TypeError, match="not callable"):
        fake_meter.tracked(42)  # type: ignore[call-overload]


def test_tracked_coroutines_count_until_they_finish(fake_meter: MeterType) -> None:
    """A tracked coroutine is in flight until it returns, several at once from one thread."""
    release = asyncio.Event()

    @fake_meter.tracked
    async def query(value: int) -> int:
        await release.wait()
        return value

    async def main() -> tuple[list[int], int]:
        tasks = [asyncio.create_task(query(n)) for n in range(5)]
        await asyncio.sleep(0)
        in_flight = fake_meter.snapshot().concurrency
        release.set()
        return list(await asyncio.gather(*tasks)), in_flight

    results, in_flight = asyncio.run(main())
    assert results == [0, 1, 2, 3, 4]
    assert in_flight == 5
    snap = fake_meter.snapshot()
    assert (snap.queries, snap.errors, snap.concurrency) == (5, 0, 0)
    assert inspect.iscoroutinefunction(query)


def test_cancelling_a_tracked_coroutine_counts_an_error(fake_meter: MeterType) -> None:
    """Cancellation ends the query as an error and CancelledError reaches the caller."""

    @fake_meter.tracked
    async def query() -> None:
        await asyncio.sleep(3600)

    async def main() -> None:
        task = asyncio.create_task(query())
        await asyncio.sleep(0)
        assert fake_meter.snapshot().concurrency == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    snap = fake_meter.snapshot()
    assert (snap.queries, snap.errors, snap.concurrency) == (1, 1, 0)


def test_a_coroutine_closed_unfinished_ends_its_query(fake_meter: MeterType) -> None:
    """A started coroutine that is closed before finishing still ends, as an error."""

    class Suspend:
        def __await__(self) -> Generator[None, None, None]:
            yield

    @fake_meter.tracked
    async def query() -> None:
        await Suspend()

    coroutine = query()
    coroutine.send(None)  # runs to the first suspension, as an event loop would
    assert fake_meter.snapshot().concurrency == 1
    coroutine.close()
    snap = fake_meter.snapshot()
    assert (snap.queries, snap.errors, snap.concurrency) == (1, 1, 0)


def test_the_default_meter_is_what_querymeter_snapshot_reads() -> None:
    """querymeter.snapshot() reads querymeter.default_meter()."""
    meter = querymeter.default_meter()
    assert isinstance(meter, querymeter.Meter)
    assert meter is querymeter.default_meter()
    before = querymeter.snapshot()
    with meter.track():
        pass
    after = querymeter.snapshot()
    assert after.meter_id == meter.meter_id == before.meter_id
    assert after.queries == before.queries + 1


def test_each_meter_has_its_own_identity(Meter: type[MeterType]) -> None:
    """Two meters have different ids, and each snapshot carries its meter's id."""
    first, second = Meter(), Meter()
    assert first.meter_id != second.meter_id
    assert first.snapshot().meter_id == first.meter_id


def test_meter_repr_shows_identity_and_counts(fake_meter: MeterType) -> None:
    """repr(meter) names the meter and its counts."""
    with fake_meter.track():
        pass
    assert repr(fake_meter) == (
        f"<querymeter.Meter {fake_meter.meter_id:#x} queries=1 errors=0 concurrency=0>"
    )


def test_meter_class_refuses_unknown_implementations() -> None:
    """meter_class() accepts "c" or "python" and names the problem otherwise."""
    with pytest.raises(ValueError, match='"c" or "python"'):
        meter_class("rust")


FORK_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from querymeter.meter import meter_class

    meter = meter_class(sys.argv[1])()
    with meter.track():
        pass
    in_flight = meter.begin()
    before = meter.snapshot()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        fresh = meter.snapshot()
        elapsed = meter.end(in_flight)   # a parent's query: inert here
        after_end = meter.snapshot()
        with meter.track():
            pass
        counted = meter.snapshot()
        os.write(write_end, json.dumps({
            "fresh": fresh._asdict(), "elapsed": elapsed,
            "after_end": after_end._asdict(), "counted": counted._asdict(),
        }).encode())
        os._exit(0)
    os.close(write_end)
    child = json.loads(os.read(read_end, 65536))
    os.waitpid(pid, 0)
    parent = meter.snapshot()
    meter.end(in_flight)
    print(json.dumps({"before": before._asdict(), "child": child,
                      "parent": parent._asdict(), "final": meter.snapshot()._asdict()}))
    """
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()")
def test_a_forked_child_starts_with_fresh_counters(implementation: str) -> None:
    """After fork the child's meter starts from zero under a new id; the parent's is unchanged."""
    # A fresh interpreter: forking this multi-threaded test process is unsafe.
    output = subprocess.run(
        [sys.executable, "-c", FORK_SCRIPT, implementation],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    result = json.loads(output)
    before, child, parent = result["before"], result["child"], result["parent"]
    fresh = child["fresh"]
    assert (fresh["queries"], fresh["errors"], fresh["concurrency"]) == (0, 0, 0)
    assert (fresh["total_ns"], fresh["busy_ns"]) == (0, 0)
    assert fresh["uptime_ns"] < before["uptime_ns"] + 10**9
    assert fresh["meter_id"] != before["meter_id"]
    assert child["elapsed"] > 0
    assert child["after_end"]["queries"] == 0
    assert child["after_end"]["concurrency"] == 0
    assert (child["counted"]["queries"], child["counted"]["concurrency"]) == (1, 0)
    assert (parent["queries"], parent["concurrency"]) == (before["queries"], 1)
    assert parent["meter_id"] == before["meter_id"]
    assert parent["total_ns"] >= before["total_ns"]
    assert (result["final"]["queries"], result["final"]["concurrency"]) == (2, 0)
