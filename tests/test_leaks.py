"""The C core leaks neither memory nor references, and its objects are collectable."""

from __future__ import annotations

import contextlib
import gc
import sys
import tracemalloc
import weakref
from typing import Any

from .conftest import load_meter_class


def exercise(meter: Any, tracked: Any, argument: object, marker: object, rounds: int) -> None:
    """Every C path: begin/end, errors, track(), tracked calls and failures, snapshots."""
    begin, end = meter.begin, meter.end
    for _ in range(rounds):
        end(begin())
        end(begin(), error=True)
    for _ in range(rounds // 10):
        meter.snapshot()
        with meter.track():
            pass
        tracked(argument, key=argument)
        with contextlib.suppress(ValueError):
            tracked(argument, fail=marker)


def test_the_c_core_leaks_no_memory_or_references() -> None:
    """10^6 begin/end pairs and 10^5 snapshots leave memory and every refcount unchanged."""
    meter = load_meter_class("c")()
    argument = object()
    # Carried by a fresh exception each time: re-raising one exception object
    # would grow its __traceback__ chain, which is Python's doing, not ours.
    marker = object()

    def query(value: object, key: object = None, fail: object = None) -> object:
        if fail is not None:
            raise ValueError(fail)
        return value

    tracked = meter.tracked(query)
    watched = {
        "meter": meter,
        "token type": type(meter.begin()),
        "tracker type": type(meter.track()),
        "tracked": tracked,
        "function": query,
        "argument": argument,
        "marker": marker,
        "key name": "key",
    }
    exercise(meter, tracked, argument, marker, rounds=10_000)  # warm caches and freelists
    gc.collect()
    refcounts = {name: sys.getrefcount(obj) for name, obj in watched.items()}
    tracemalloc.start()
    try:
        gc.collect()
        before, _ = tracemalloc.get_traced_memory()
        exercise(meter, tracked, argument, marker, rounds=1_000_000)
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 64 * 1024, f"grew by {after - before} bytes"
    assert {name: sys.getrefcount(obj) for name, obj in watched.items()} == refcounts
    rounds = 10_000 + 1_000_000
    snap = meter.snapshot()
    # Per round two pairs, one an error; per tenth round a block, a call, a failing call.
    assert snap.queries == 2 * rounds + 3 * (rounds // 10)
    assert snap.errors == rounds + rounds // 10
    assert snap.concurrency == 1  # the token taken above to learn the token type


def test_c_objects_in_reference_cycles_are_collected() -> None:
    """A meter, a tracker and a tracked function held only by a cycle are freed by the GC."""
    meter_type = load_meter_class("c")
    meter = meter_type()
    tracked = meter.tracked(lambda: None)
    tracked.cycle = tracked  # type: ignore[attr-defined]
    tracker = meter.track()
    holder: dict[str, Any] = {"tracker": tracker}
    holder["self"] = holder

    class ClockOwner:
        """Owns the meter whose clock is its own method: meter -> clock -> owner -> meter."""

        def __init__(self) -> None:
            self.meter = meter_type(clock=self.read)

        def read(self) -> int:
            return 0

    owner = ClockOwner()
    refs = [weakref.ref(obj) for obj in (meter, tracked, owner.meter)]
    del meter, tracked, tracker, holder, owner
    gc.collect()
    assert [ref() for ref in refs] == [None, None, None]
