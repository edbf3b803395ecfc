"""SharedMeter: one set of counters for many processes, in a file each of them maps.

The file (fixed size, made if missing) holds a header, the service's counters
and one slot per process that has it open: the slot's own counters (that
process's share), its pid and process start time, and the start of its oldest
query in flight.  Every begin and end updates the service's counters and the
slot's in one critical section, with the same bookkeeping as a meter of one
process (busy time is the time at least one query ran in any process: every
process reads the one system-wide CLOCK_MONOTONIC).  The core does the
counting (``MeterCore._share``); this module makes, checks and maps the file,
takes and gives back slots, and settles the slots of processes that died.

Layout (version 1, native little-endian, 64-bit words; see the structs in
``core/_c.c``)::

    0     magic "QMSHARED", version, header size (4096), slot count, slot size (256)
    24    file size; 32 lock protocol (1: C atomics, 2: fcntl), ready flag
    40    boot id (16 bytes); 56 meter id
    64    the lock word; lock steals, reaped slots, reaped queries, claims
    128   the service's counters: start, stamp, started, concurrency, queries,
          errors, busy ns, (pad), total ns as 128 bits
    4096  slot i at 4096 + 256 * i: state and pid, process start ticks,
          generation, opened wall ns, oldest start, has-oldest; counters at +64
"""

from __future__ import annotations

import fcntl
import mmap
import os
import secrets
import struct
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from .. import _faults
from ..core import IMPLEMENTATION
from ..meter import _MeterAPI, _new_meter_id, core_module, meter_class
from ..readings import Snapshot

if TYPE_CHECKING:
    from ..statements import StatementTable

__all__ = ["SharedMeter", "SharedMeterError", "SlotReading", "shared_meter_class"]

MAGIC = b"QMSHARED"
VERSION = 1
HEADER_SIZE = 4096
SLOT_SIZE = 256
MAX_SLOTS = 65536
PROTOCOLS = {"c": 1, "python": 2}
_PROTOCOL_NAMES = {1: "the C core", 2: "the pure-Python core"}
# The header's first 64 bytes: magic, version, header size, slot count, slot
# size, file size, lock protocol, ready, boot id, meter id.
_HEAD = struct.Struct("<8sIIIIQII16sQ")
_READY_OFFSET = 36
# The service's counters: start, stamp, started.
_SERVICE = struct.Struct("<qqq")
_SERVICE_OFFSET = 128
# How often snapshot() looks for dead processes, at most (slots() always does).
REAP_INTERVAL_NS = 1_000_000_000


class SharedMeterError(OSError):
    """A shared meter's file cannot be used: corrupt, truncated, of another version
    or core, or with every slot taken.  The message names the problem and the path."""


class SlotReading(NamedTuple):
    """One live process's slot at one instant: who holds it, and its own counters."""

    #: The slot's index in the file.
    slot: int
    #: The process holding it.
    pid: int
    #: That process's start time, clock ticks after boot (/proc/<pid>/stat
    #: field 22; 0 where unknown): with the pid, it names the process.
    start_time: int
    #: When the process took the slot, Unix time in ns.
    opened_wall_ns: int
    #: Age of the process's oldest query in flight, ns; None when none is.
    oldest_in_flight_ns: int | None
    #: The process's own counters (its share of the service's).
    snapshot: Snapshot


def _boot_id() -> bytes:
    """This boot's identity: a file's monotonic times are meaningless after a reboot."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot_id = bytes.fromhex(f.read().strip().replace("-", ""))
    except (OSError, ValueError):
        return b"\0" * 16
    return boot_id[:16].ljust(16, b"\0")


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start ticks) of a process from /proc; None if /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return ("X", 0) if os.path.isdir("/proc/self") else None
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return fields[0].decode("ascii"), int(fields[19])
    except (IndexError, ValueError):
        return None


def _own_start_ticks() -> int:
    stat = _proc_stat(os.getpid())
    return 0 if stat is None else stat[1]


def process_alive(pid: int, start_time: int) -> bool:
    """Whether the process that took a slot still runs: its pid exists, is not a
    zombie, and (where /proc tells) started when the slot's holder did."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: it exists
    stat = _proc_stat(pid)
    if stat is None:
        return True
    state, ticks = stat
    if state in ("Z", "X"):
        return False
    return start_time == 0 or ticks == start_time


class _File:
    """A shared meter's file, mapped: its descriptor, its mapping and what its header says."""

    __slots__ = ("fd", "mapping", "meter_id", "path", "slot_count")

    def __init__(self, path: str, slots: int, protocol: int) -> None:
        self.path = path
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise SharedMeterError(
                exc.errno, f"cannot open the shared meter's file: {exc.strerror}", path
            ) from None
        try:
            # Whoever finds the file empty initialises it; the others wait here.
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                self.slot_count, self.meter_id = _prepare(fd, path, slots, protocol)
                self.mapping = mmap.mmap(fd, HEADER_SIZE + self.slot_count * SLOT_SIZE)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd

    def close(self) -> None:
        try:
            self.mapping.close()
        finally:
            os.close(self.fd)


def _problem(path: str, message: str) -> SharedMeterError:
    return SharedMeterError(f"{path}: {message}")


def _prepare(fd: int, path: str, slots: int, protocol: int) -> tuple[int, int]:
    """Checks the file (under its flock), initialising it if empty; (slot count, meter id)."""
    size = os.fstat(fd).st_size
    if size == 0:
        return _initialise(fd, slots, protocol)
    head = os.pread(fd, _HEAD.size, 0)
    if len(head) < _HEAD.size or head[:8] != MAGIC:
        raise _problem(
            path,
            f"not a querymeter shared meter's file (it has {size} bytes and no "
            "querymeter header); remove it or choose another path",
        )
    (
        _magic,
        version,
        header_size,
        slot_count,
        slot_size,
        file_size,
        lock_protocol,
        ready,
        boot,
        meter_id,
    ) = _HEAD.unpack(head)
    if version != VERSION:
        raise _problem(
            path,
            f"a shared meter's file of version {version}, and this querymeter reads "
            f"version {VERSION}: remove it (it is remade) or run the same version everywhere",
        )
    if header_size != HEADER_SIZE or slot_size != SLOT_SIZE or not 1 <= slot_count <= MAX_SLOTS:
        raise _problem(path, "corrupt shared meter's file: its header's sizes are wrong")
    expected = HEADER_SIZE + slot_count * SLOT_SIZE
    if file_size != expected or size != expected:
        if ready != 1:
            return _initialise(fd, slots, protocol)
        raise _problem(
            path,
            f"truncated or corrupt shared meter's file: {size} bytes, its header "
            f"says {file_size} and {slot_count} slots need {expected}",
        )
    if ready != 1 or boot != _boot_id():
        # Its maker died while initialising it (it held the flock we hold), or
        # it is from before a reboot (no process of it lives, and its monotonic
        # times mean nothing now): made anew.
        return _initialise(fd, slots, protocol)
    if lock_protocol != protocol:
        raise _problem(
            path,
            "this shared meter's file is counted by "
            f"{_PROTOCOL_NAMES.get(lock_protocol, 'an unknown core')}; "
            f"this process runs {_PROTOCOL_NAMES[protocol]}, whose lock is another: "
            "open it with the same core in every process",
        )
    return slot_count, meter_id


def _initialise(fd: int, slots: int, protocol: int) -> tuple[int, int]:
    size = HEADER_SIZE + slots * SLOT_SIZE
    meter_id = secrets.randbits(63)
    os.ftruncate(fd, 0)
    os.ftruncate(fd, size)
    head = _HEAD.pack(
        MAGIC, VERSION, HEADER_SIZE, slots, SLOT_SIZE, size, protocol, 0, _boot_id(), meter_id
    )
    os.pwrite(fd, head, 0)
    now = time.monotonic_ns()
    os.pwrite(fd, _SERVICE.pack(now, now, 1), _SERVICE_OFFSET)
    # Ready last: a file whose maker died before this is made anew.
    os.pwrite(fd, struct.pack("<I", 1), _READY_OFFSET)
    return slots, meter_id


# A shared meter's own attributes: slots of the concrete class (shared_meter_class),
# which alone may add a layout to the core's.
_SLOTS = ("_file", "_generation", "_last_reap_ns", "_reap_lock", "_slot")


class _SharedMeterAPI(_MeterAPI):
    """What a shared meter adds to a meter: its file, its slot, the other processes."""

    if TYPE_CHECKING:
        # What the type checker must know of the concrete class's slots; a mixin's
        # own slots would conflict with the C core's layout at run time.
        __slots__ = _SLOTS
    else:
        __slots__ = ()

    _file: _File | None
    _slot: int
    _generation: int
    _last_reap_ns: int
    _reap_lock: threading.Lock

    def __init__(self, path: str | os.PathLike[str], *, slots: int = 256) -> None:
        try:
            path = os.fspath(path)
        except TypeError:
            raise TypeError(
                f"path must be a str or os.PathLike, not {type(path).__name__}"
            ) from None
        if not isinstance(path, str):
            raise TypeError("path must be a str path, not bytes")
        if isinstance(slots, bool) or not isinstance(slots, int) or not 1 <= slots <= MAX_SLOTS:
            raise ValueError(f"slots must be an int from 1 to {MAX_SLOTS}, not {slots!r}")
        super().__init__()
        self._file = None
        self._slot = -1
        self._generation = 0
        self._last_reap_ns = 0
        self._reap_lock = threading.Lock()
        protocol = PROTOCOLS["c" if core_module(self).__name__.endswith("._c") else "python"]
        shared_file = _File(path, slots, protocol)
        try:
            self._attach(shared_file)
        except BaseException:
            shared_file.close()
            raise
        self._file = shared_file

    # ------------------------------------------------------------ slots

    def _attach(self, shared_file: _File) -> None:
        """Take a slot in the file and count into it; SharedMeterError when every slot is taken."""
        core = core_module(self)
        pid, ticks = os.getpid(), _own_start_ticks()
        claimed = core._shared_claim(
            shared_file.mapping, shared_file.fd, pid, ticks, time.time_ns()
        )
        if claimed is None:
            # Full: settle the slots of processes gone, and try once more.
            self._reap(shared_file)
            claimed = core._shared_claim(
                shared_file.mapping, shared_file.fd, pid, ticks, time.time_ns()
            )
        if claimed is None:
            raise _problem(
                shared_file.path,
                f"every one of its {shared_file.slot_count} slots is taken by a live "
                "process; make the file with more slots (remove it and open it with "
                "a larger slots=)",
            )
        self._slot, self._generation = claimed
        self._share(shared_file.mapping, shared_file.fd, self._slot, shared_file.meter_id)  # type: ignore[attr-defined]

    def _reap(self, shared_file: _File) -> int:
        """Settle the slots of processes that died; how many."""
        core = core_module(self)
        _service, slots, _extras = core._shared_read(shared_file.mapping, shared_file.fd)
        reaped = 0
        for index, pid, ticks, generation, _opened, _oldest, _own in slots:
            if (
                not process_alive(pid, ticks)
                and core._shared_settle(shared_file.mapping, shared_file.fd, index, generation, 1)
                >= 0
            ):
                reaped += 1
        self._last_reap_ns = time.monotonic_ns()
        return reaped

    def reap(self) -> int:
        """Settle now the slots of processes that died (their queries in flight end as
        errors) and free them; how many.  ``snapshot()`` does it at most once a second,
        ``slots()`` every time."""
        shared_file = self._open_file()
        with self._reap_lock:
            return self._reap(shared_file)

    def _open_file(self) -> _File:
        shared_file = self._file
        if shared_file is None:
            raise ValueError("this shared meter is closed")
        return shared_file

    # ------------------------------------------------------------ readings

    def snapshot(self) -> Snapshot:
        """The service's counters at one instant, every process's queries included."""
        shared_file = self._file
        if (
            shared_file is not None
            and time.monotonic_ns() - self._last_reap_ns >= REAP_INTERVAL_NS
            and self._reap_lock.acquire(blocking=False)
        ):
            try:
                self._reap(shared_file)
            except Exception as exc:  # noqa: BLE001 - a reading must not fail for it
                _faults.report("shared meter: reaping failed", exc)
            finally:
                self._reap_lock.release()
        return self._read(Snapshot)  # type: ignore[attr-defined, no-any-return]

    def slots(self) -> list[SlotReading]:
        """Every live process's slot, read at one instant, by index (the dead settled first)."""
        shared_file = self._open_file()
        with self._reap_lock:
            self._reap(shared_file)
        _service, slots, _extras = core_module(self)._shared_read(
            shared_file.mapping, shared_file.fd
        )
        return [
            SlotReading(index, pid, ticks, opened, oldest, Snapshot._make(own))
            for index, pid, ticks, _generation, opened, oldest, own in slots
        ]

    def reaped(self) -> tuple[int, int]:
        """(slots, queries in flight) of dead processes settled so far, in the file's life."""
        shared_file = self._open_file()
        _service, _slots, (_steals, slots, queries) = core_module(self)._shared_read(
            shared_file.mapping, shared_file.fd
        )
        return slots, queries

    @property
    def path(self) -> str:
        """The shared file's path."""
        return self._open_file().path

    @property
    def slot(self) -> int:
        """This process's slot index in the file."""
        self._open_file()
        return self._slot

    @property
    def slot_count(self) -> int:
        """How many slots the file has (set when it was made)."""
        return self._open_file().slot_count

    @property
    def closed(self) -> bool:
        """Whether close() has been called."""
        return self._file is None

    @property
    def _mapping(self) -> mmap.mmap:
        """The file's mapping (for the shared statement table)."""
        return self._open_file().mapping

    # ------------------------------------------------------------ statements

    def enable_statements(self, max_statements: int = 5000) -> StatementTable:
        """Aggregate every query of every process under its statement's fingerprint,
        in one table shared through a file beside the meter's (see docs/processes.md)."""
        from ._statements import enable_shared_statements

        return cast("StatementTable", enable_shared_statements(self, max_statements))

    # ------------------------------------------------------------ life

    def close(self) -> None:
        """Give the slot back (its queries in flight end as errors) and unmap the file.

        The meter counts in this process alone from then on.  Closing twice does nothing.
        """
        shared_file, self._file = self._file, None
        if shared_file is None:
            return
        core = core_module(self)
        try:
            core._shared_settle(
                shared_file.mapping, shared_file.fd, self._slot, self._generation, 0
            )
        finally:
            self._reset(_new_meter_id())  # type: ignore[attr-defined]
            shared_file.close()

    def __enter__(self) -> _SharedMeterAPI:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _after_fork_in_child(self) -> None:
        # The parent's slot is the parent's: the child takes its own, and the
        # queries in flight in the parent at the fork are not the child's.
        self._reap_lock = threading.Lock()
        shared_file = self._file
        if shared_file is None:
            _MeterAPI._after_fork_in_child(self)  # type: ignore[arg-type]
            return
        try:
            self._attach(shared_file)
        except Exception as exc:  # noqa: BLE001 - a fork must not fail for it
            _faults.report("shared meter: no slot for a forked child, counting alone", exc)
            self._file = None
            self._reset(_new_meter_id())  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        if self._file is None:
            return "<querymeter.SharedMeter (closed)>"
        reading = self._read(Snapshot)  # type: ignore[attr-defined]
        return (
            f"<querymeter.SharedMeter {self._file.path!r} slot={self._slot} "
            f"queries={reading.queries} errors={reading.errors} "
            f"concurrency={reading.concurrency}>"
        )


_DOC = """SharedMeter(path, *, slots=256): a meter whose counters every process that opens
``path`` shares (see docs/processes.md).

The file is made if missing (``slots`` slots, each process that opens it
takes one; an existing file keeps its own count), and mapped.  The
snapshot is the service's: every process's queries, busy time the time at
least one ran anywhere.  ``slots()`` gives each live process's own share;
processes that died are settled (their queries in flight end as errors) and
their slots reused.  ``close()`` (or ``with``) gives the slot back.
Raises SharedMeterError (an OSError) for a file it cannot use.
"""

_classes: dict[str, type[Any]] = {}


def shared_meter_class(implementation: str) -> type[SharedMeter]:
    """The SharedMeter class over the named core, "c" or "python" (for tests and benchmarks)."""
    cls = _classes.get(implementation)
    if cls is None:
        base = meter_class(implementation)
        namespace = {"__slots__": _SLOTS, "__doc__": _DOC, "__module__": __name__}
        cls = type("SharedMeter", (_SharedMeterAPI, base), namespace)
        _classes[implementation] = cls
    return cast("type[SharedMeter]", cls)


if TYPE_CHECKING:
    from ..meter import Meter

    class SharedMeter(_SharedMeterAPI, Meter):
        pass

else:
    SharedMeter = shared_meter_class(IMPLEMENTATION)
