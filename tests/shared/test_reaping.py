"""Reaping: a process that dies, even by SIGKILL mid-query, leaves nothing counted in flight.

A slot names its holder by pid and process start time (/proc/<pid>/stat field
22, clock ticks after boot).  Whoever finds the holder gone (no such pid, a
zombie, or a pid whose process started at another time: reused) settles the
slot: its queries in flight end at that moment as errors, and the slot is
free for the next process.  The oracle is each worker's own account, sent
before it is killed: the queries it completed, and the one it was running.
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from querymeter.meter import core_module
from querymeter.shared._meter import HEADER_SIZE, SLOT_SIZE

from ..conftest import check_invariants
from .meters import SharedMeter, shared_path

__all__ = ["SharedMeter", "shared_path"]

# The slot's pid (uint32 at +4) and start ticks (uint64 at +8); the lock word at 64.
PID_OFFSET = 4
TICKS_OFFSET = 8
LOCK_OFFSET = 64


def start_ticks(pid: int) -> int:
    """A process's start time, clock ticks after boot: /proc/<pid>/stat field 22."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    return int(data[data.rfind(b")") + 2 :].split()[19])


class Worker:
    """A forked process that completes some queries, then hangs in one until killed."""

    def __init__(self, shared: Any, completed: int, *, fail: int = 0) -> None:
        report_read, report_write = os.pipe()
        hold_read, hold_write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            status = 1
            try:
                os.close(report_read)
                os.close(hold_write)
                done = 0
                for number in range(completed):
                    try:
                        with shared.track():
                            if number < fail:
                                raise RuntimeError("a failing query")
                    except RuntimeError:
                        pass
                    done += 1
                with shared.track():
                    # Its own account, sent from inside the query in flight.
                    os.write(report_write, b"%d %d\n" % (done, shared.slot))
                    os.read(hold_read, 1)
                status = 0
            finally:
                os._exit(status)
        os.close(report_write)
        os.close(hold_read)
        self.pid = pid
        self._hold = hold_write
        with os.fdopen(report_read, "rb") as report:
            done, slot = report.readline().split()
        #: Queries the worker says it completed.
        self.completed = int(done)
        #: The slot it counts into.
        self.slot = int(slot)

    def kill(self) -> None:
        """SIGKILL it in the middle of its query, and wait for it."""
        os.kill(self.pid, signal.SIGKILL)
        _, status = os.waitpid(self.pid, 0)
        os.close(self._hold)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def forge(path: Path, offset: int, fmt: str, *values: int) -> None:
    """Write into the shared file, as another process's memory writes would land."""
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, *values))


@pytest.fixture
def unrelated() -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    """Starts a live process that never opened the meter (killed after the test)."""
    started: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        started.append(subprocess.Popen(["sleep", "600"]))
        return started[-1]

    yield start
    for process in started:
        process.kill()
        process.wait()


def state(pid: int) -> str:
    """A process's state letter: /proc/<pid>/stat field 3."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    return data[data.rfind(b")") + 2 :].split()[0].decode()


def in_time(work: Callable[[], None], deadline_s: float = 20.0) -> int:
    """Run ``work()`` in a forked child, killed if it outlives the deadline; its exit status."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        status = 1
        try:
            work()
            status = 0
        finally:
            os._exit(status)
    until = time.monotonic() + deadline_s
    while time.monotonic() < until:
        finished, status = os.waitpid(pid, os.WNOHANG)
        if finished:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"the child did not finish within {deadline_s} s")


# ------------------------------------------------------------------ one worker


def test_a_worker_killed_mid_query_is_settled_and_its_slot_reused(
    SharedMeter: Any, shared_path: Path
) -> None:
    """The killed worker's query counts in flight until reaped, then as one failed query."""
    with SharedMeter(shared_path) as shared:
        worker = Worker(shared, completed=3)
        during = shared.snapshot()
        assert (during.queries, during.errors, during.concurrency) == (3, 0, 1)
        assert {reading.pid for reading in shared.slots()} == {os.getpid(), worker.pid}
        worker.kill()
        assert shared.reap() == 1
        after = shared.snapshot()
        check_invariants(after)
        assert (after.queries, after.errors, after.concurrency) == (4, 1, 0)
        assert shared.reaped() == (1, 1)
        assert [reading.pid for reading in shared.slots()] == [os.getpid()]
        # Settled once: the service's time stops growing with the dead query.
        assert shared.reap() == 0
        later = shared.snapshot()
        assert later.total_ns == after.total_ns and later.busy_ns == after.busy_ns
        # The next process takes the freed slot.
        successor = Worker(shared, completed=0)
        assert successor.slot == worker.slot
        successor.kill()


def test_a_zombie_is_dead(SharedMeter: Any, shared_path: Path) -> None:
    """A killed worker not yet waited for (a zombie) is settled all the same."""
    with SharedMeter(shared_path) as shared:
        worker = Worker(shared, completed=1)
        os.kill(worker.pid, signal.SIGKILL)
        until = time.monotonic() + 10
        while state(worker.pid) != "Z":
            assert time.monotonic() < until, "the worker did not die"
            time.sleep(0.001)
        assert shared.reap() == 1
        snap = shared.snapshot()
        assert (snap.queries, snap.errors, snap.concurrency) == (2, 1, 0)
        worker.kill()


def test_the_reader_settles_the_dead(
    SharedMeter: Any, shared_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """snapshot() settles a dead worker's query itself (at most once per reap interval)."""
    import querymeter.shared._meter as shared_module

    with SharedMeter(shared_path) as shared:
        worker = Worker(shared, completed=2)
        assert shared.snapshot().concurrency == 1
        worker.kill()
        monkeypatch.setattr(shared_module, "REAP_INTERVAL_NS", 0)
        snap = shared.snapshot()
        assert (snap.queries, snap.errors, snap.concurrency) == (3, 1, 0)
        assert shared.reaped() == (1, 1)


def test_another_process_settles_the_dead_to_take_a_slot(
    SharedMeter: Any, shared_path: Path
) -> None:
    """With every slot taken, a process opening the file settles a dead holder's and takes it."""
    with SharedMeter(shared_path, slots=2) as shared:
        dead = Worker(shared, completed=1)
        dead.kill()
        # Nobody reaps here: the successor, finding every slot taken, settles the dead one's.
        successor = Worker(shared, completed=1)
        assert successor.slot == dead.slot
        assert shared.reaped() == (1, 1)
        snap = shared.snapshot()
        # The dead one's completed query and its failed one, the successor's completed one
        # and the one it runs now.
        assert (snap.queries, snap.errors, snap.concurrency) == (3, 1, 1)
        successor.kill()


# ------------------------------------------------------------------ pid reuse


def test_a_reused_pid_is_not_the_dead_worker(
    SharedMeter: Any, shared_path: Path, unrelated: Callable[[], subprocess.Popen[bytes]]
) -> None:
    """A dead worker's pid, now a live process that started at another time, is settled."""
    with SharedMeter(shared_path) as shared:
        worker = Worker(shared, completed=1)
        recorded = start_ticks(worker.pid)
        time.sleep(0.05)  # five clock ticks: the next process starts at another time
        reuser = unrelated()
        assert start_ticks(reuser.pid) > recorded
        worker.kill()
        # The slot now names a live process that is not the worker: what pid reuse looks like.
        slot_offset = HEADER_SIZE + worker.slot * SLOT_SIZE
        forge(shared_path, slot_offset + PID_OFFSET, "<I", reuser.pid)
        assert state(reuser.pid) in ("R", "S")
        assert shared.reap() == 1
        snap = shared.snapshot()
        assert (snap.queries, snap.errors, snap.concurrency) == (2, 1, 0)


def test_a_live_holder_is_not_reaped(
    SharedMeter: Any, shared_path: Path, unrelated: Callable[[], subprocess.Popen[bytes]]
) -> None:
    """A slot whose pid and start time are a live process's is left alone, query in flight."""
    with SharedMeter(shared_path) as shared:
        worker = Worker(shared, completed=1)
        time.sleep(0.05)
        holder = unrelated()
        worker.kill()
        # Both the pid and its start time of a live process: a holder still running.
        slot_offset = HEADER_SIZE + worker.slot * SLOT_SIZE
        forge(shared_path, slot_offset + PID_OFFSET, "<I", holder.pid)
        forge(shared_path, slot_offset + TICKS_OFFSET, "<Q", start_ticks(holder.pid))
        assert shared.reap() == 0
        assert shared.snapshot().concurrency == 1
        assert {reading.pid for reading in shared.slots()} == {os.getpid(), holder.pid}
        # Once that process ends, the slot is settled.
        holder.kill()
        holder.wait()
        assert shared.reap() == 1
        snap = shared.snapshot()
        assert (snap.queries, snap.errors, snap.concurrency) == (2, 1, 0)


# ------------------------------------------------------------------ the lock


def test_a_lock_left_held_by_a_killed_process_is_taken_over(
    SharedMeter: Any, shared_path: Path, implementation: str
) -> None:
    """A process killed while holding the file's lock does not stop the others counting."""
    with SharedMeter(shared_path) as shared:
        worker = Worker(shared, completed=1)
        ready_read, ready_write = os.pipe()
        holder = os.fork()
        if holder == 0:  # pragma: no cover - the child
            try:
                fd = os.open(shared_path, os.O_RDWR)
                if implementation == "c":
                    # The C core's lock word holds its owner's token: pid and start time.
                    token = os.getpid() << 32 | start_ticks(os.getpid()) & 0xFFFFFFFF
                    os.pwrite(fd, struct.pack("<Q", token), LOCK_OFFSET)
                else:
                    import fcntl

                    # The pure-Python core's lock: a record lock on the lock word.
                    fcntl.lockf(fd, fcntl.LOCK_EX, 8, LOCK_OFFSET)
                os.write(ready_write, b"x")
                time.sleep(600)
            finally:
                os._exit(1)
        os.read(ready_read, 1)
        os.kill(holder, signal.SIGKILL)
        os.waitpid(holder, 0)
        worker.kill()

        def count_after_the_holder_died() -> None:
            with shared.track():
                pass
            shared.reap()
            snap = shared.snapshot()
            # The parent's slot was inherited by a forked child: this child counts in its own.
            assert (snap.queries, snap.errors, snap.concurrency) == (3, 1, 0), snap

        assert in_time(count_after_the_holder_died) == 0
        os.close(ready_read)
        os.close(ready_write)
        if implementation == "c":
            _service, _slots, (steals, _reaped, _queries) = core_module(shared)._shared_read(
                shared._mapping, shared._file.fd
            )
            assert steals == 1


# ------------------------------------------------------------------ many workers


def test_a_thousand_workers_killed_in_turn(SharedMeter: Any, shared_path: Path) -> None:
    """1000 workers, each SIGKILLed mid-query while others run, leave the file's size and
    the counters exact: every completed query, every killed one as an error."""
    workers = 1000
    with SharedMeter(shared_path, slots=8) as shared:
        size = shared_path.stat().st_size
        running: list[Worker] = []
        completed = failed = 0
        for number in range(workers):
            fail = 1 if number % 3 == 0 else 0
            worker = Worker(shared, completed=number % 4, fail=fail)
            completed += worker.completed
            failed += min(fail, worker.completed)
            running.append(worker)
            if len(running) > 3:
                running.pop(0).kill()
        for worker in running:
            worker.kill()
        shared.reap()
        snap = shared.snapshot()
        check_invariants(snap)
        assert snap.queries == completed + workers
        assert snap.errors == failed + workers
        assert snap.concurrency == 0
        assert shared.reaped() == (workers, workers)
        assert [reading.pid for reading in shared.slots()] == [os.getpid()]
        assert shared_path.stat().st_size == size


def test_a_lock_naming_a_reused_pid_is_taken_over(
    SharedMeter: Any,
    shared_path: Path,
    implementation: str,
    unrelated: Callable[[], subprocess.Popen[bytes]],
) -> None:
    """The C core's lock word naming a live pid with another start time is a dead owner's."""
    if implementation != "c":
        pytest.skip("the pure-Python core's lock is a record lock, which the kernel drops")
    with SharedMeter(shared_path) as shared:
        born = time.monotonic()
        time.sleep(0.05)
        reuser = unrelated()
        ticks = start_ticks(reuser.pid)
        # The owner's token as a process that started before the reuser would have left it.
        stale = ticks - max(1, int((time.monotonic() - born) * os.sysconf("SC_CLK_TCK")))
        forge(shared_path, LOCK_OFFSET, "<Q", reuser.pid << 32 | stale & 0xFFFFFFFF)

        def count() -> None:
            with shared.track():
                pass

        assert in_time(count) == 0
        assert state(reuser.pid) in ("R", "S")
        _service, _slots, (steals, _reaped, _queries) = core_module(shared)._shared_read(
            shared._mapping, shared._file.fd
        )
        assert steals == 1
