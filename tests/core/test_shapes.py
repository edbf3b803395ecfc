"""The shapes the hooks compose (call, awaitable, iterators, occupancies), on both cores."""

from __future__ import annotations

import asyncio
import ctypes
import dis
import gc
import subprocess
import sys
import textwrap
import types
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from querymeter._patching import Patch
from querymeter.dbapi._connections import set_connection_meter
from querymeter.dbapi._in_place import cursor_batch, cursor_call
from querymeter.meter import Meter as MeterType

from ..conftest import FakeClock, check_invariants


class Boom(Exception):
    """An application's exception."""


def counts(meter: MeterType) -> tuple[int, int, int]:
    """(queries, errors, concurrency) of a meter now."""
    snap = meter.snapshot()
    check_invariants(snap)
    return snap.queries, snap.errors, snap.concurrency


# ------------------------------------------------------------------ _call


def test_call_counts_one_query_and_passes_arguments_through(fake_meter: MeterType) -> None:
    """_call calls the function with exactly the arguments given and returns its result."""
    received: list[Any] = []

    def driver(*args: Any, **kwargs: Any) -> str:
        received.append((args, kwargs))
        return "rows"

    rows = (x for x in range(3))
    assert fake_meter._call(driver, 1, rows, func="named") == "rows"
    assert received == [((1, rows), {"func": "named"})]
    assert counts(fake_meter) == (1, 0, 0)


def test_call_counts_an_error_and_raises_the_same_exception(fake_meter: MeterType) -> None:
    """A function that raises is an error query, and its exception object passes through."""
    error = Boom("no")

    def driver() -> None:
        raise error

    with pytest.raises(Boom) as caught:
        fake_meter._call(driver)
    assert caught.value is error
    assert counts(fake_meter) == (1, 1, 0)


def test_call_times_the_call_on_the_meters_clock(fake_meter: MeterType, clock: FakeClock) -> None:
    """The query lasts exactly as long as the call, on the meter's clock."""
    fake_meter._call(clock.advance, 250)
    assert fake_meter.snapshot().total_ns == 250


def test_call_without_a_function_is_a_type_error(fake_meter: MeterType) -> None:
    """_call() with nothing to call raises TypeError and counts nothing."""
    with pytest.raises(TypeError):
        fake_meter._call()  # type: ignore[call-arg]
    assert counts(fake_meter) == (0, 0, 0)


# -------------------------------------------------------------- _awaiting


async def _answer(clock: FakeClock | None = None, value: Any = 42) -> Any:
    await asyncio.sleep(0)
    if clock is not None:
        clock.advance(100)
    return value


def test_an_awaited_coroutine_is_one_query_from_first_step_to_end(
    fake_meter: MeterType, clock: FakeClock
) -> None:
    """Awaiting the wrapper returns the coroutine's value, timed over its whole run."""

    async def main() -> Any:
        wrapped = fake_meter._awaiting(_answer(clock, (1, 2)))
        assert counts(fake_meter) == (0, 0, 0)  # creating it begins nothing
        return await wrapped

    assert asyncio.run(main()) == (1, 2)
    assert counts(fake_meter) == (1, 0, 0)
    assert fake_meter.snapshot().total_ns == 100


def test_asyncio_takes_the_wrapper_for_a_coroutine(fake_meter: MeterType) -> None:
    """create_task and gather accept the wrapper as they accept a coroutine."""

    async def main() -> list[Any]:
        task = asyncio.create_task(fake_meter._awaiting(_answer()))  # type: ignore[arg-type]
        return await asyncio.gather(task, fake_meter._awaiting(_answer(value=7)))

    assert asyncio.run(main()) == [42, 7]
    assert counts(fake_meter) == (2, 0, 0)


def test_an_exception_in_the_awaitable_is_an_error(fake_meter: MeterType) -> None:
    """A coroutine that raises ends its query as an error and raises the same exception."""

    async def failing() -> None:
        await asyncio.sleep(0)
        raise Boom("late")

    async def main() -> None:
        await fake_meter._awaiting(failing())

    with pytest.raises(Boom):
        asyncio.run(main())
    assert counts(fake_meter) == (1, 1, 0)


def test_a_cancelled_await_ends_its_query_as_an_error(fake_meter: MeterType) -> None:
    """Cancelling the task that awaits the wrapper ends the query, as an error."""

    async def main() -> None:
        task = asyncio.ensure_future(fake_meter._awaiting(asyncio.sleep(10)))
        await asyncio.sleep(0.01)
        assert counts(fake_meter)[2] == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert counts(fake_meter) == (1, 1, 0)


def test_closing_an_awaitable_mid_way_ends_it_as_an_error(fake_meter: MeterType) -> None:
    """close() after the first step ends the query as an error and closes the coroutine."""
    inner = _answer()
    wrapped: Any = fake_meter._awaiting(inner)
    wrapped.send(None)  # first step: asyncio.sleep(0) yields
    assert counts(fake_meter) == (0, 0, 1)
    wrapped.close()
    assert counts(fake_meter) == (1, 1, 0)
    assert inner.cr_frame is None  # closed


def test_closing_an_unstarted_awaitable_counts_nothing(fake_meter: MeterType) -> None:
    """close() before any step closes the coroutine and counts nothing."""
    inner = _answer()
    fake_meter._awaiting(inner).close()  # type: ignore[attr-defined]
    assert counts(fake_meter) == (0, 0, 0)
    assert inner.cr_frame is None


def test_an_abandoned_awaitable_ends_its_query_when_collected(fake_meter: MeterType) -> None:
    """A wrapper dropped mid-way ends its query, as an error, when it goes."""
    wrapped: Any = fake_meter._awaiting(_answer())
    wrapped.send(None)
    del wrapped
    gc.collect()
    assert counts(fake_meter) == (1, 1, 0)


def test_throwing_into_an_awaitable_reaches_the_coroutine(fake_meter: MeterType) -> None:
    """throw() is passed to the coroutine, which may handle it and return."""

    async def handles() -> str:
        try:
            await asyncio.sleep(0)
        except Boom:
            return "handled"
        return "not thrown"

    wrapped: Any = fake_meter._awaiting(handles())
    wrapped.send(None)
    with pytest.raises(StopIteration) as stopped:
        wrapped.throw(Boom("in"))
    assert stopped.value.value == "handled"
    assert counts(fake_meter) == (1, 0, 0)


def test_an_awaitable_cannot_be_awaited_twice(fake_meter: MeterType) -> None:
    """A finished wrapper refuses another await, as a coroutine does, and counts nothing more."""

    async def main() -> None:
        wrapped = fake_meter._awaiting(_answer())
        await wrapped
        with pytest.raises(RuntimeError, match="cannot reuse"):
            await wrapped

    asyncio.run(main())
    assert counts(fake_meter) == (1, 0, 0)


def test_any_awaitable_can_be_wrapped(fake_meter: MeterType) -> None:
    """Futures and generator-based coroutines are awaited through the wrapper too."""

    @types.coroutine
    def old_style() -> Any:
        yield
        return "old"

    async def main() -> tuple[Any, Any]:
        future = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(future.set_result, "future")
        return await fake_meter._awaiting(future), await fake_meter._awaiting(old_style())

    assert asyncio.run(main()) == ("future", "old")
    assert counts(fake_meter) == (2, 0, 0)


def test_a_non_awaitable_is_refused_at_the_first_step(fake_meter: MeterType) -> None:
    """Awaiting a wrapper of something not awaitable raises TypeError and counts nothing."""

    async def main() -> None:
        await fake_meter._awaiting(42)  # type: ignore[arg-type]

    with pytest.raises(TypeError, match="can't be used in 'await' expression"):
        asyncio.run(main())
    assert counts(fake_meter) == (0, 0, 0)


# ------------------------------------------------------------- _iterating


def test_an_iterator_is_one_query_until_exhausted(fake_meter: MeterType, clock: FakeClock) -> None:
    """Rows come through unchanged; the query runs from the first row asked for to the end."""

    def rows() -> Iterator[int]:
        for row in range(3):
            clock.advance(10)
            yield row

    stream = fake_meter._iterating(rows())
    assert counts(fake_meter) == (0, 0, 0)
    assert list(stream) == [0, 1, 2]
    assert counts(fake_meter) == (1, 0, 0)
    assert fake_meter.snapshot().total_ns == 30
    assert list(stream) == []  # exhausted stays exhausted, counted once
    assert counts(fake_meter) == (1, 0, 0)


def test_an_iterator_that_raises_is_an_error(fake_meter: MeterType) -> None:
    """An exception from the stream ends the query as an error and passes through."""

    def rows() -> Iterator[int]:
        yield 1
        raise Boom("mid-stream")

    with pytest.raises(Boom):
        list(fake_meter._iterating(rows()))
    assert counts(fake_meter) == (1, 1, 0)


def test_closing_an_iterator_early_is_not_an_error(fake_meter: MeterType) -> None:
    """close() after some rows ends the query without an error and closes the source."""
    closed: list[bool] = []

    def rows() -> Iterator[int]:
        try:
            yield from range(10)
        finally:
            closed.append(True)

    stream: Any = fake_meter._iterating(rows())
    next(stream)
    stream.close()
    assert closed == [True]
    assert counts(fake_meter) == (1, 0, 0)


def test_an_iterator_dropped_mid_way_ends_its_query(fake_meter: MeterType) -> None:
    """An iterator abandoned after some rows ends its query, not as an error, when collected."""
    stream = fake_meter._iterating(iter(range(10)))
    next(stream)
    del stream
    gc.collect()
    assert counts(fake_meter) == (1, 0, 0)


# ------------------------------------------------------- _async_iterating


async def _async_rows(count: int, fail: bool = False) -> AsyncIterator[int]:
    for row in range(count):
        await asyncio.sleep(0)
        yield row
    if fail:
        raise Boom("async stream")


def test_an_async_iterator_is_one_query_until_exhausted(fake_meter: MeterType) -> None:
    """Async rows come through unchanged, counted as one query."""

    async def main() -> list[int]:
        return [row async for row in fake_meter._async_iterating(_async_rows(3))]

    assert asyncio.run(main()) == [0, 1, 2]
    assert counts(fake_meter) == (1, 0, 0)


def test_an_async_iterator_that_raises_is_an_error(fake_meter: MeterType) -> None:
    """An exception from the async stream ends the query as an error."""

    async def main() -> None:
        async for _ in fake_meter._async_iterating(_async_rows(2, fail=True)):
            pass

    with pytest.raises(Boom):
        asyncio.run(main())
    assert counts(fake_meter) == (1, 1, 0)


def test_aclose_ends_an_async_iteration_early_without_error(fake_meter: MeterType) -> None:
    """aclose() after one row ends the query, not as an error, and closes the source."""

    async def main() -> None:
        stream: Any = fake_meter._async_iterating(_async_rows(10))
        assert await stream.__anext__() == 0
        await stream.aclose()
        with pytest.raises(StopAsyncIteration):
            await stream.__anext__()

    asyncio.run(main())
    assert counts(fake_meter) == (1, 0, 0)


def test_a_cancelled_async_iteration_is_an_error(fake_meter: MeterType) -> None:
    """Cancelling a task waiting on the next row ends the query as an error."""

    async def slow_rows() -> AsyncIterator[int]:
        yield 1
        await asyncio.sleep(10)
        yield 2

    async def consume() -> None:
        async for _ in fake_meter._async_iterating(slow_rows()):
            pass

    async def main() -> None:
        task = asyncio.ensure_future(consume())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert counts(fake_meter) == (1, 1, 0)


def test_only_async_iterators_are_taken(fake_meter: MeterType) -> None:
    """A plain list is refused with TypeError at once."""
    with pytest.raises(TypeError, match="not an async iterator"):
        fake_meter._async_iterating([1, 2])  # type: ignore[arg-type]


# ------------------------------------------------------------ occupancies


class Record:
    """A pool record stand-in: weakly referenceable."""


def test_occupancies_count_timed_calls_failures_and_timeouts(
    fake_meter: MeterType, clock: FakeClock
) -> None:
    """A timed call is under way while it runs; failures and timeouts are counted apart."""
    occupancies = fake_meter._occupancies(2)

    def wait(ns: int, error: type[BaseException] | None = None) -> str:
        assert occupancies._read()[2][0][0] == 1  # under way during the call
        clock.advance(ns)
        if error is not None:
            raise error("x")
        return "connection"

    timed = occupancies._timed(0, wait, TimeoutError)
    assert timed(100) == "connection"
    with pytest.raises(TimeoutError):
        timed(50, TimeoutError)
    with pytest.raises(Boom):
        timed(25, Boom)
    uptime, _, slots = occupancies._read()
    assert slots[0] == (0, 3, 2, 1, 175)
    assert slots[1] == (0, 0, 0, 0, 0)
    assert uptime == 175


def test_occupancies_hold_and_release_records_once(fake_meter: MeterType, clock: FakeClock) -> None:
    """A record is held once however often it is checked out, and released once."""
    occupancies = fake_meter._occupancies(1)
    records: dict[int, Any] = {}
    record = Record()
    assert occupancies._hold(0, records, id(record), record) is True
    assert occupancies._hold(0, records, id(record), record) is False
    clock.advance(40)
    assert occupancies._read()[2][0] == (1, 0, 0, 0, 40)
    assert occupancies._release(0, records, id(record), record) is True
    assert occupancies._release(0, records, id(record), record) is False
    assert occupancies._read()[2][0] == (0, 1, 0, 0, 40)
    assert records == {}


def test_a_lost_record_stops_being_held_without_ending(fake_meter: MeterType) -> None:
    """A record collected while held is dropped from "under way", and is no release."""
    occupancies = fake_meter._occupancies(1)
    records: dict[int, Any] = {}
    record = Record()
    occupancies._hold(0, records, id(record), record)
    del record
    gc.collect()
    assert occupancies._drop_lost(0, records) == 1
    assert occupancies._read()[2][0][:2] == (0, 0)


def test_bump_counts_events(fake_meter: MeterType) -> None:
    """_bump counts an event as ended, never under way."""
    occupancies = fake_meter._occupancies(3)
    occupancies._bump(2)
    occupancies._bump(2)
    assert occupancies._read()[2][2] == (0, 2, 0, 0, 0)


def test_occupancies_refuse_bad_arguments(fake_meter: MeterType) -> None:
    """Bad counts, indexes, records and timeouts raise clear errors."""
    for count in (0, 65, "3"):
        with pytest.raises(ValueError, match="count must be an int from 1 to 64"):
            fake_meter._occupancies(count)  # type: ignore[arg-type]
    occupancies = fake_meter._occupancies(2)
    with pytest.raises(IndexError, match="occupancy index out of range: 2"):
        occupancies._bump(2)
    with pytest.raises(TypeError, match="records must be a dict"):
        occupancies._hold(0, [], 1, Record())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="timeout must be an exception class"):
        occupancies._timed(0, print, timeout=42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        type(occupancies)()


def test_occupancies_restart_with_their_meter(fake_meter: MeterType, clock: FakeClock) -> None:
    """After the meter's reset (what fork does), occupancies start again from zero."""
    occupancies = fake_meter._occupancies(1)
    occupancies._bump(0)
    clock.advance(10)
    fake_meter._reset(7)
    assert occupancies._read()[2][0] == (0, 0, 0, 0, 0)
    assert occupancies._read()[0] == 0


# --------------------------------------------- exceptions raised asynchronously


class Interrupt(BaseException):
    """Raised into running code from outside, as a signal handler's exception would be."""


class Step:
    """An awaitable that yields once (no event loop needed)."""

    def __await__(self) -> Iterator[None]:
        return iter([None])


# Where CPython 3.11 checks for a pending asynchronous exception: after these
# instructions (a call that returned, a backward jump), and at a RESUME that
# starts a frame.  Nowhere else can such an exception arrive.
_CHECKED_AFTER = {
    dis.opmap[name]
    for name in (
        "CALL",
        "CALL_FUNCTION_EX",
        "JUMP_BACKWARD",
        "POP_JUMP_BACKWARD_IF_FALSE",
        "POP_JUMP_BACKWARD_IF_TRUE",
        "POP_JUMP_BACKWARD_IF_NONE",
        "POP_JUMP_BACKWARD_IF_NOT_NONE",
    )
    if name in dis.opmap
}
_RESUME = dis.opmap["RESUME"]


def _interrupt_at_every_check(work: Callable[[], None]) -> int:
    """Run work() once per point where it could receive an asynchronous exception.

    An exception raised asynchronously (a signal handler's, a thread's
    PyThreadState_SetAsyncExc) arrives only where the interpreter checks for
    one.  A tracer raises Interrupt at the first such point of the first
    run, the second of the second, and so on, until a run completes: every
    point is covered, deterministically.  Returns the number of runs.
    """
    runs = 0
    while True:
        runs += 1
        checks = 0
        fired = False
        previous: dict[int, int] = {}

        def tracer(
            frame: types.FrameType,
            event: str,
            arg: Any,
            target: int = runs,
            previous: dict[int, int] = previous,
        ) -> Any:
            nonlocal checks, fired
            frame.f_trace_opcodes = True
            if event == "call":
                previous.pop(id(frame), None)
            elif event == "opcode":
                code = frame.f_code.co_code
                opcode = code[frame.f_lasti]
                checked = previous.get(id(frame)) in _CHECKED_AFTER or (
                    opcode == _RESUME and code[frame.f_lasti + 1] < 2
                )
                previous[id(frame)] = opcode
                if checked:
                    checks += 1
                    if checks == target:
                        fired = True
                        # Raised at this point; tracing stops with it.
                        raise Interrupt
            return tracer

        sys.settrace(tracer)
        try:
            work()
        except Interrupt:
            pass
        finally:
            sys.settrace(None)
        _forget_handled_exception()
        if not fired:
            return runs


def _forget_handled_exception() -> None:
    """Clear the thread's handled exception (sys.exception()) outside any handler.

    CPython 3.11 leaves the exception being handled set for the rest of the
    thread's life when a tracer raises inside an ``except`` block (a plain
    coroutine driven as in _drive shows it, querymeter aside); every later
    exception in the thread would show it as its context ("During handling
    of the above exception...").  No handler is active here, so what is
    set is that leak.
    """
    if sys.exception() is not None:
        set_handled = ctypes.pythonapi.PyErr_SetHandledException
        set_handled.argtypes = [ctypes.c_void_p]
        set_handled.restype = None
        set_handled(None)


class Connection:
    """A driver connection stand-in: weakly referenceable."""


class Cursor:
    """A driver cursor whose executemany sends each row through execute (as PyMySQL's)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def execute(self, row: int) -> int:
        return sum(range(row))

    def executemany(self, rows: list[int]) -> int:
        return sum(self.execute(row) for row in rows)


def _drive(awaitable: Any) -> None:
    """Run an awaitable that needs no event loop to its end."""
    try:
        while True:
            awaitable.send(None)
    except StopIteration:
        pass


def _shape(name: str, meter: MeterType) -> Callable[[], None]:
    """One way a hook counts a query, as a function to call over and over."""
    # Counted in place, as PyMySQL's and mysqlclient's cursors are.
    counting = type(
        "Counting", (Cursor,), {"execute": Cursor.execute, "executemany": Cursor.executemany}
    )
    Patch(counting, "execute", cursor_call).install()
    Patch(counting, "executemany", cursor_batch(Cursor.execute)).install()
    connection = Connection()
    set_connection_meter(connection, meter)
    counted: Any = counting(connection)

    @meter.tracked
    async def query() -> int:
        await Step()
        return 1

    def track() -> None:
        with meter.track():
            sum(range(20))

    shapes: dict[str, Callable[[], Any]] = {
        "timed": lambda: counted.execute(20),
        "call": lambda: meter._call(sum, range(20)),
        "track": track,
        "iterating": lambda: list(meter._iterating(iter(range(3)))),
        "awaiting": lambda: _drive(meter._awaiting(Step())),  # type: ignore[arg-type]
        "tracked-coroutine": lambda: _drive(query()),
        "batch": lambda: counted.executemany([1, 2, 3]),
    }
    return shapes[name]  # type: ignore[return-value]


@pytest.mark.parametrize(
    "shape",
    ["timed", "call", "track", "iterating", "awaiting", "tracked-coroutine", "batch"],
)
def test_no_query_stays_in_flight_under_asynchronous_exceptions(
    implementation: str, Meter: type[MeterType], shape: str
) -> None:
    """Exceptions raised into the thread at any bytecode never leave a query counted in flight."""
    if implementation != "c":
        pytest.skip("the pure-Python core pairs begin and end in Python (documented)")
    meter = Meter()
    work = _shape(shape, meter)
    # An Interrupt that lands in a finalizer (a coroutine being closed) is
    # unraisable; pytest's hook would keep it, and with it the frames and
    # the objects whose queries are still in flight: drop them instead.
    hook = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: None
    try:
        runs = _interrupt_at_every_check(work)
    finally:
        sys.unraisablehook = hook
    gc.collect()
    snap = meter.snapshot()
    assert snap.concurrency == 0, f"{snap.concurrency} left in flight after {runs} runs"
    assert snap.queries > 0 and runs > 1
    # Nothing was left behind that stops counting (a batch's marks, say).
    work()
    assert meter.snapshot().queries > snap.queries


# ------------------------------------------------------------------- fork

FORK_UNDER_LOAD = textwrap.dedent(
    """
    import os, sys, threading, time
    from querymeter.meter import meter_class

    meter = meter_class(sys.argv[1])()
    tracked = meter.tracked(lambda: sum(range(50)))
    stop = threading.Event()

    def load():
        while not stop.is_set():
            tracked()
            meter._call(sum, range(50))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    hung = 0
    for _ in range(int(sys.argv[2])):
        pid = os.fork()
        if pid == 0:
            tracked()
            meter._call(sum, range(5))
            snap = meter.snapshot()
            os._exit(0 if (snap.queries, snap.concurrency) == (2, 0) else 3)
        deadline = time.monotonic() + 5
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                assert os.waitstatus_to_exitcode(status) == 0, status
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                hung += 1
                break
            time.sleep(0.001)
    stop.set()
    for thread in threads:
        thread.join()
    print(hung)
    """
)


def test_wrapped_functions_work_in_a_child_forked_under_load(implementation: str) -> None:
    """Children forked while four threads run wrapped queries count their own, none hangs."""
    # A fresh interpreter: forking this multi-threaded test process is unsafe.
    result = subprocess.run(
        [sys.executable, "-c", FORK_UNDER_LOAD, implementation, "100"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0", "children hung"
