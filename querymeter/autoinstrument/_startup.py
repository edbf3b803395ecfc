"""The program's side of zero-code instrumentation: turn on from the environment, report at exit.

The ``sitecustomize`` in ``bootstrap/`` calls :func:`start` as the
interpreter starts.  With ``QUERYMETER_AUTO=1`` (exactly) it turns
autoinstrument on for the default meter, and at the program's exit it prints
the laws of the five counters (and the top statements) to stderr and saves
the report when asked: the program's stdout is never written to.  Every
fault of querymeter's own is reported (the ``querymeter`` logger, on stderr)
and never raised: the program runs as it would without querymeter.

The environment (each ``== "1"`` where it is a switch):

- ``QUERYMETER_AUTO=1``: on.
- ``QUERYMETER_AUTO_DRIVERS=sqlite3,psycopg,...``: only these (default: all).
- ``QUERYMETER_AUTO_STATEMENTS=1``: keep the statement table; print the top statements.
- ``QUERYMETER_AUTO_SAMPLE=RATE``: capture that share of queries (0 to 1) for the report.
- ``QUERYMETER_AUTO_REPORT=PATH``: save the report there (``.json``, ``.html`` or
  ``.md``); ``{pid}`` in it becomes the process id.
- ``QUERYMETER_AUTO_RUN=1``: set by ``querymeter run``; these variables and the
  bootstrap folder on ``PYTHONPATH`` are removed from the program's environment
  once read, so the programs it starts in turn run without querymeter.
"""

from __future__ import annotations

import atexit
import math
import os
import shlex
import sys
import time
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .. import _faults
from ..core import IMPLEMENTATION
from ..meter import Meter, default_meter
from ..readings import Interval, Snapshot
from ..statements import SampleLog, StatementTable
from ._hooks import TARGETS
from ._hooks import _targets as check_targets

__all__ = [
    "BOOTSTRAP",
    "ENVIRONMENT",
    "REPORT_SUFFIXES",
    "Settings",
    "parse_sample",
    "start",
    "summary_text",
]

#: The folder that holds the ``sitecustomize`` of the programs querymeter runs.
BOOTSTRAP = Path(__file__).resolve().parent / "bootstrap"
#: The variables that :func:`start` reads.
ENVIRONMENT = (
    "QUERYMETER_AUTO",
    "QUERYMETER_AUTO_DRIVERS",
    "QUERYMETER_AUTO_STATEMENTS",
    "QUERYMETER_AUTO_SAMPLE",
    "QUERYMETER_AUTO_REPORT",
    "QUERYMETER_AUTO_RUN",
)
REPORT_SUFFIXES = (".json", ".html", ".md")
#: The statements printed at exit.
TOP_STATEMENTS = 10
#: Samples kept for the report: the newest ones.
SAMPLE_CAPACITY = 1000


def parse_sample(text: str) -> float:
    """A sampling rate from text: a number from 0 to 1 (ValueError otherwise)."""
    try:
        rate = float(text)
    except ValueError:
        rate = math.nan
    if not 0 <= rate <= 1:
        raise ValueError(f"a sampling rate is a number from 0 to 1, not {text!r}")
    return rate


def check_report_path(text: str) -> str:
    """A report path whose suffix names a format (ValueError otherwise)."""
    if Path(text).suffix.lower() not in REPORT_SUFFIXES:
        raise ValueError(
            f"cannot tell the report's format from {text!r}: end it in {', '.join(REPORT_SUFFIXES)}"
        )
    return text


@dataclass(frozen=True)
class Settings:
    """What ``QUERYMETER_AUTO*`` asks for."""

    drivers: tuple[str, ...] | None = None
    statements: bool = False
    sample: float | None = None
    report: str | None = None
    consume: bool = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Settings:
        """Read the variables; ValueError names the one that is wrong."""
        drivers = None
        text = environ.get("QUERYMETER_AUTO_DRIVERS", "")
        if text.strip():
            names = [name.strip() for name in text.split(",") if name.strip()]
            try:
                check_targets(names)
            except ValueError as exc:
                raise ValueError(f"QUERYMETER_AUTO_DRIVERS={text!r}: {exc}") from None
            drivers = tuple(names)
        sample = None
        text = environ.get("QUERYMETER_AUTO_SAMPLE", "")
        if text:
            try:
                sample = parse_sample(text)
            except ValueError as exc:
                raise ValueError(f"QUERYMETER_AUTO_SAMPLE: {exc}") from None
        report = environ.get("QUERYMETER_AUTO_REPORT") or None
        if report is not None:
            try:
                check_report_path(report)
            except ValueError as exc:
                raise ValueError(f"QUERYMETER_AUTO_REPORT: {exc}") from None
            report = report.replace("{pid}", str(os.getpid()))
        return cls(
            drivers=drivers,
            statements=environ.get("QUERYMETER_AUTO_STATEMENTS") == "1",
            sample=sample,
            report=report,
            consume=environ.get("QUERYMETER_AUTO_RUN") == "1",
        )


@dataclass
class _Run:
    """One measured program: what it started with, read again at its exit."""

    settings: Settings
    meter: Meter
    before: Snapshot
    started_wall_ns: int
    pid: int
    command: str
    table: StatementTable | None = None
    log: SampleLog | None = None
    notes: list[str] = field(default_factory=list)


def start(environ: MutableMapping[str, str] | None = None) -> bool:
    """Turn autoinstrument on if ``QUERYMETER_AUTO=1``; whether it did.  Never raises."""
    if environ is None:
        environ = os.environ
    try:
        if environ.get("QUERYMETER_AUTO") != "1":
            return False
        try:
            settings = Settings.from_environ(environ)
        except ValueError as exc:
            _say(f"{exc}; not measuring this program")
            return False
        if settings.consume:
            forget_environment(environ)
        from . import autoinstrument

        meter = default_meter()
        autoinstrument(meter, drivers=settings.drivers)
        run = _Run(
            settings,
            meter,
            meter.snapshot(),
            time.time_ns(),
            os.getpid(),
            # What was run, as typed (sys.argv may not be set yet, and the program may change it).
            shlex.join(sys.orig_argv),
        )
        if settings.statements:
            run.table = meter.enable_statements()
        if settings.sample:
            run.log = meter.enable_sampling(settings.sample, capacity=SAMPLE_CAPACITY)
        atexit.register(_at_exit, run)
        return True
    except Exception as exc:  # noqa: BLE001 - the program runs, measured or not
        _faults.report("autoinstrument: could not start from the environment", exc)
        return False


def forget_environment(environ: MutableMapping[str, str]) -> None:
    """Take ``querymeter run``'s variables and bootstrap folder out of ``environ``."""
    for name in ENVIRONMENT:
        environ.pop(name, None)
    path = environ.get("PYTHONPATH")
    if path is None:
        return
    ours = str(BOOTSTRAP)
    if path == ours:
        del environ["PYTHONPATH"]
    elif path.startswith(ours + os.pathsep):
        environ["PYTHONPATH"] = path[len(ours) + len(os.pathsep) :]


def _say(text: str) -> None:
    _write(f"querymeter: {text}")


def _write(text: str) -> None:
    stream = _stderr()
    if stream is not None:
        try:
            stream.write(f"{text}\n")
            stream.flush()
        except Exception:  # noqa: BLE001, S110 - nowhere left to say it
            pass


def _stderr() -> TextIO | None:
    # The program may have closed or replaced sys.stderr by its exit.
    for stream in (sys.stderr, sys.__stderr__):
        if stream is not None and not getattr(stream, "closed", False):
            return stream
    return None


# ------------------------------------------------------------------ at exit


def _at_exit(run: _Run) -> None:
    # A forked child (multiprocessing's workers leave by os._exit, other
    # programs may not) inherits this handler: only the process that started
    # reports, once.
    if os.getpid() != run.pid:
        return
    try:
        after = run.meter.snapshot()
        ended_wall_ns = time.time_ns()
        interval = after - run.before
        reading = run.table.snapshot() if run.table is not None else None
        statements = [] if reading is None else list(reading.statements)
        from ..sessions._report import markers_between

        made = markers_between(run.started_wall_ns, ended_wall_ns)
        text = summary_text(
            interval, statements, command=run.command, faults=_faults.counts(), markers=made
        )
        if run.log is not None:
            where = "in the report" if run.settings.report else "--report PATH saves them"
            sampled = len(run.log.samples()) + run.log.dropped
            text += f"\n  {sampled:,} queries sampled at {run.settings.sample:g} ({where})"
        if run.settings.report is not None:
            try:
                saved = _save_report(run, interval, reading, ended_wall_ns)
                text += f"\nquerymeter: report saved to {saved}"
            except Exception as exc:  # noqa: BLE001 - the summary still goes out
                _faults.report("autoinstrument: could not save the report", exc)
                text += f"\nquerymeter: could not save the report: {exc}"
        _write(text)
    except Exception as exc:  # noqa: BLE001 - the program has ended: never spoil its exit
        _faults.report("autoinstrument: could not report at exit", exc)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:,.3f} ms"


def _value(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def summary_text(
    interval: Interval,
    statements: Sequence[Any] = (),
    *,
    command: str = "",
    faults: Mapping[str, int] | None = None,
    top: int = TOP_STATEMENTS,
    markers: Sequence[Any] = (),
) -> str:
    """What ``querymeter run`` prints at the program's exit: the laws, the top statements,
    the change markers the program made (the newest ``top``)."""
    what = f" ({command})" if command else ""
    lines = [
        f"querymeter: {interval.queries:,} queries, {interval.errors:,} errors "
        f"in {interval.duration:,.3f} s{what}",
        f"  X  throughput        {_value(interval.throughput, ',.1f')} queries/s",
        f"  N  concurrency       {_value(interval.concurrency, '.4f')}"
        "   (mean queries in flight; Little's Law N = X·R)",
        f"  R  response time     {_ms(interval.response_time)}",
        f"  U  utilization       {_value(interval.utilization, '.4f')}"
        "   (share of time a query ran; U = X·S)",
        f"  S  service time      {_ms(interval.service_time)}",
        f"  E  error rate        {_value(interval.error_rate, ',.3f')} errors/s",
    ]
    if statements:
        ranked = sorted(statements, key=lambda s: (-s.total_ns, s.fingerprint))
        db_ns = sum(s.total_ns for s in statements) or 1
        shown = ranked[:top]
        lines.append(f"  top statements by total time ({len(shown)} of {len(statements)}):")
        lines.append(f"  {'calls':>9} {'total ms':>11} {'mean ms':>9} {'share':>6}  statement")
        for s in shown:
            text = " ".join(s.fingerprint.split())
            if len(text) > 100:
                text = text[:97] + "..."
            lines.append(
                f"  {s.calls:>9,} {s.total_ns / 1e6:>11,.3f} {(s.mean_ns or 0) / 1e6:>9,.3f} "
                f"{s.total_ns / db_ns:>6.1%}  {text}"
            )
    if markers:
        shown_markers = list(markers)[-top:]
        lines.append(f"  change markers ({len(shown_markers)} of {len(markers)}, newest last):")
        lines.extend(f"    {marker}" for marker in shown_markers)
    if faults:
        listed = "; ".join(f"{cause} ({count})" for cause, count in sorted(faults.items()))
        lines.append(f"  querymeter's own faults (the program was unaffected): {listed}")
    return "\n".join(lines)


def _save_report(run: _Run, interval: Interval, reading: Any, ended_wall_ns: int) -> Path:
    """The program's figures as a session report (``querymeter.Report``), saved by suffix."""
    from ..sessions._overhead import settings_overhead
    from ..sessions._report import FORMAT, Report, marker_dicts, sample_dicts
    from ..sessions._session import _environment, _figures

    settings = run.settings
    notes = list(run.notes)
    statements = []
    db_ns = 0 if reading is None else reading.total_ns
    if reading is not None:
        for stats in reading.statements:
            row = stats.as_dict()
            row["share"] = stats.total_ns / db_ns if db_ns else 0.0
            statements.append(row)
    else:
        notes.append(
            "statements were not kept: run with --statements (QUERYMETER_AUTO_STATEMENTS=1)"
        )
    samples = [] if run.log is None else run.log.samples()
    engines = _engines_of(run.meter)
    pool_ns = 0
    for engine in engines:
        pool = _pool_snapshot(engine)
        pool_ns += 0 if pool is None else pool.wait_ns
    whole = (interval.total_ns + pool_ns) or 1
    waited = [("the database (queries)", interval.total_ns), ("a pool connection", pool_ns)]
    parts = [{"name": name, "ns": ns, "share": ns / whole} for name, ns in waited]
    top_name, top_ns = max(waited, key=lambda part: part[1])
    verdict = f"mostly waiting for {top_name}" if top_ns else "no time recorded"
    try:
        per_query = settings_overhead(
            type(run.meter),
            statements=run.table is not None,
            rate=settings.sample,
            slower_than=None,
        )
        share = per_query * interval.queries / interval.total_ns if interval.total_ns else None
        summary = f"instrumentation ≈ {per_query / 1000:.2f} µs/query"
        if share is not None:
            summary += f" ≈ {share * 100:.2f} % of DB time in this run"
        effect: dict[str, Any] = {
            "ns_per_query": per_query,
            "share_of_db_time": share,
            "summary": summary,
        }
    except Exception as exc:  # noqa: BLE001 - a figure of the report: a note instead
        _faults.report("autoinstrument: could not measure the observer effect", exc)
        effect = {"ns_per_query": None, "share_of_db_time": None, "summary": "not measured"}
    faults = _faults.counts()
    if faults:
        notes.append(
            "querymeter's own faults: "
            + "; ".join(f"{cause} ({count})" for cause, count in sorted(faults.items()))
        )
    data: dict[str, Any] = {
        "format": FORMAT,
        "objective": f"querymeter run: {run.command}",
        "settings": {
            "duration": interval.duration,
            "sample": settings.sample or 0.0,
            "slower_than": None,
            "focus": None,
            "max_samples": SAMPLE_CAPACITY,
            "explain": False,
            "waits": False,
            "core": IMPLEMENTATION,
            "statements": run.table is not None,
            "drivers": sorted(settings.drivers or TARGETS),
        },
        "started_wall_ns": run.started_wall_ns,
        "ended_wall_ns": ended_wall_ns,
        "ended_by": "exit",
        "figures": _figures(interval),
        "statements": statements,
        "untexted": None if reading is None else reading.untexted.as_dict(),
        "waits": {
            "client": {"parts": parts, "verdict": verdict, "scopes": 0, "scope_ns": 0},
            "server": None,
        },
        "samples": sample_dicts(samples),
        "samples_dropped": 0 if run.log is None else run.log.dropped,
        "markers": marker_dicts(run.started_wall_ns, ended_wall_ns),
        "observer_effect": effect,
        "environment": _environment(engines),
        "notes": notes,
    }
    return Report(data).save(settings.report or "")


def _engines_of(meter: Meter) -> list[Any]:
    qs = sys.modules.get("querymeter.sqlalchemy")
    if qs is None:
        return []
    return [e for e in qs.instrumented_engines() if qs.instrumented_meter(e) is meter]


def _pool_snapshot(engine: Any) -> Any:
    try:
        return sys.modules["querymeter.sqlalchemy"].pool_snapshot(engine)
    except Exception as exc:  # noqa: BLE001 - an engine uninstrumented meanwhile: no figure
        _faults.report("autoinstrument: could not read a pool", exc)
        return None
