"""Ctrl-C during a scalability run: the workers finish their call and are joined; it goes on."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from querymeter import scaling
from querymeter.meter import Meter as MeterType


def scaling_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("querymeter-scaling")]


class Interrupter:
    """A progress callback that raises KeyboardInterrupt on its third report."""

    def __init__(self) -> None:
        self.reports = 0

    def __call__(self, progress: scaling.Progress) -> None:
        self.reports += 1
        if self.reports == 3:
            raise KeyboardInterrupt


@pytest.mark.parametrize("kind", ["threads", "tasks"])
def test_an_interrupt_joins_the_workers_and_leaves_the_setup(
    Meter: type[MeterType], kind: str
) -> None:
    """KeyboardInterrupt mid-level reaches the caller after the workers stopped and setup exited."""
    meter = Meter()
    entered: list[int] = []
    exited: list[int] = []
    levels_seen: list[int] = []

    @contextmanager
    def setup(workers: int) -> Iterator[int]:
        entered.append(workers)
        try:
            yield workers
        finally:
            exited.append(workers)

    def workload(workers: int) -> None:
        with meter.track():
            time.sleep(0.005)

    async def async_workload(workers: int) -> None:
        with meter.track():
            await asyncio.sleep(0.005)

    measured = scaling.measure(
        workload if kind == "threads" else async_workload,
        levels=(2, 3, 4),
        duration=30,
        warmup=0,
        meter=meter,
        setup=setup,
        progress=Interrupter(),
    )
    with pytest.raises(KeyboardInterrupt):
        for level in measured:
            levels_seen.append(level.workers)
    assert levels_seen == []
    assert entered == exited == [2]
    assert scaling_threads() == []
    assert meter.snapshot().concurrency == 0


_CHILD = textwrap.dedent(
    """
    import asyncio, signal, sys, threading, time
    import querymeter
    from querymeter import scaling

    signal.signal(signal.SIGINT, signal.default_int_handler)
    meter = querymeter.Meter()
    kind = sys.argv[1]

    def workload():
        with meter.track():
            time.sleep(0.01)

    async def async_workload():
        with meter.track():
            await asyncio.sleep(0.01)

    told = []

    def progress(where):
        if where.level_index == 1 and not told:
            told.append(True)
            print("measuring", flush=True)

    done = []
    try:
        result = scaling.measure(
            workload if kind == "threads" else async_workload,
            levels=(1, 4, 8), duration=3, warmup=0, meter=meter, progress=progress,
        )
        for level in result:
            done.append(level.workers)
            print("level", level.workers, flush=True)
    except KeyboardInterrupt:
        left = [t.name for t in threading.enumerate() if t.name.startswith("querymeter-scaling")]
        print("interrupted", done, left, meter.snapshot().concurrency, flush=True)
    """
)


@pytest.mark.parametrize("kind", ["threads", "tasks"])
def test_ctrl_c_stops_a_run_cleanly(kind: str) -> None:
    """A real SIGINT in the second level: the first level was delivered, nothing is left running."""
    with subprocess.Popen(
        [sys.executable, "-c", _CHILD, kind],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        try:
            lines = []
            for line in process.stdout:
                lines.append(line)
                if line.startswith("measuring"):
                    break
            process.send_signal(signal.SIGINT)
            rest = process.stdout.read()
            errors = process.stderr.read()
            process.wait(timeout=60)
        finally:
            process.kill()
    assert process.returncode == 0, errors
    assert "Traceback" not in errors
    assert lines[0] == "level 1\n"
    assert rest.splitlines()[-1] == "interrupted [1] [] 0"
