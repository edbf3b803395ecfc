"""One instrumented engine: its dialect's statement methods counted, its pool accounted.

Statements are counted by putting, as instance attributes of
``engine.dialect``, a counting stand-in for each of four methods:

- ``do_execute``, ``do_executemany``, ``do_execute_no_params``: every call a
  Connection makes to send a statement, including the first-connect
  initialize queries, sequences and defaults run by ``_cursor_execute``, and
  each insertmanyvalues batch (one ``do_execute`` per batch);
- ``do_ping``: the pool's pre-ping, so a failed ping is an error query.

At every call the stand-in looks the method up on the dialect's class, as
attribute lookup would without it, and calls what it finds through the
meter's call wrapper (``meter._call_statement``: begin, call and end in one
C call, then the statement observed when the meter aggregates statements).
So a class-level patch of the method (``mock.patch.object(dialect class,
"do_execute", ...)``, another tool's hook on the class) runs on an
instrumented engine whether it was made before or after ``instrument``, and
stops running when it is undone.  A method that another tool set on the
dialect instance itself before ``instrument`` shadows the class, with or
without querymeter: the stand-in calls that one, through the same wrapper.

The dialect looks these up on itself at every call (engine/base.py), so the
wrapper sees the statement exactly as long as the driver does, and ends it
exactly once whatever happens after: no ``before/after_cursor_execute`` or
``handle_error`` pairing to get wrong (handle_error can fire after
after_cursor_execute, or not at all under ``skip_user_error_events``).  The
dialect's own execution (its ``do_execute`` override, executemany batching,
insertmanyvalues) runs unchanged inside the timing, and DialectEvents
listeners keep working, since the dispatch loop in front of the call is
SQLAlchemy's, untouched.

The instrumentation is kept on the dialect itself, which every engine that
shares it (``execution_options()`` option engines, ``AsyncEngine.sync_engine``)
reaches, and which it cannot outlive.
"""

from __future__ import annotations

import logging
import types
import weakref
from collections.abc import Callable
from typing import Any

from .. import _faults
from .._patching import Patch
from ..meter import Meter
from ._handover import Handover
from ._pool import PoolAccounting
from ._pool_readings import PoolSnapshot

__all__ = ["STATEMENT_METHODS", "Instrumentation", "Lingering", "state_of"]

STATEMENT_METHODS = ("do_execute", "do_executemany", "do_execute_no_params", "do_ping")
# Where each method's statement is in a call with the dialect first (the core's
# layouts: the cursor's position, and 4 for "no parameters after the text").
# do_ping has none: its cursor position holds the connection, and no text.
_LAYOUTS = {"do_execute": 1, "do_executemany": 1, "do_execute_no_params": 5, "do_ping": 1}
# The fingerprint dialect of each SQLAlchemy dialect name; others get the default rules.
_FINGERPRINT_DIALECTS = {
    "postgresql": "postgresql",
    "mysql": "mysql",
    "mariadb": "mariadb",
    "sqlite": "sqlite",
}


def fingerprint_dialect(dialect: Any) -> str | None:
    """The fingerprint dialect of a SQLAlchemy dialect, by its name."""
    name = getattr(dialect, "name", None)
    return _FINGERPRINT_DIALECTS.get(name) if isinstance(name, str) else None


# The dialect's attribute that holds its Instrumentation (or what lingers of one).
STATE_ATTRIBUTE = "_querymeter_instrumentation"

_logger = logging.getLogger("querymeter")
_warned_about_listeners = False


def state_of(dialect: Any) -> Instrumentation | Lingering | None:
    """What querymeter keeps on a dialect: its Instrumentation, what lingers of one, or None."""
    state: Instrumentation | Lingering | None = vars(dialect).get(STATE_ATTRIBUTE)
    return state


class Lingering:
    """Statement wrappers that outlived ``uninstrument`` because another tool wrapped them.

    Putting the original back would have dropped that tool's wrapper, and a
    wrapper has no off switch (nothing but the call is on its path), so ours
    stays in its chain and keeps counting into ``meter``.  Instrumenting the
    engine again with the same meter takes them back instead of counting twice.
    """

    def __init__(self, meter: Meter, patches: dict[str, Patch]) -> None:
        self.meter = meter
        self.patches = patches


class Instrumentation:
    """What ``instrument(engine)`` added, so that ``uninstrument`` removes exactly that."""

    def __init__(self, engine: Any, meter: Meter) -> None:
        self.meter = meter
        self._dialect = weakref.ref(engine.dialect)
        self._statements: dict[str, Patch] = {}
        self.handover = Handover(meter)
        self.pool = PoolAccounting(meter, self.handover.take)

    @staticmethod
    def check_lingering(dialect: Any, meter: Meter) -> None:
        """Refuse to count into ``meter`` where a wrapper of another meter still counts."""
        lingering = state_of(dialect)
        if not isinstance(lingering, Lingering) or lingering.meter is meter:
            return
        if any(not patch.is_outermost() for patch in lingering.patches.values()):
            raise ValueError(
                "this engine's dialect still counts into another meter, through a "
                "wrapper of querymeter's that another tool has wrapped since; remove "
                "that tool's wrapper, or instrument with the same meter as before"
            )

    def install(self, engine: Any) -> None:
        """Count the dialect's statements, account the pool; report, never raise, our faults."""
        dialect = engine.dialect
        lingering = state_of(dialect)
        setattr(dialect, STATE_ATTRIBUTE, self)
        try:
            self._patch_statements(dialect, lingering)
        except Exception as exc:  # noqa: BLE001 - ours, never the application's
            _faults.report("sqlalchemy: could not count an engine's statements", exc)
        _warn_about_execute_listeners(dialect)
        try:
            self.pool.install(engine.pool)
            self.pool.listen(engine)
        except Exception as exc:  # noqa: BLE001
            _faults.report("sqlalchemy: could not account an engine's pool", exc)

    def _patch_statements(self, dialect: Any, lingering: object) -> None:
        kept = lingering.patches if isinstance(lingering, Lingering) else {}
        for name in STATEMENT_METHODS:
            patch = kept.get(name)
            if patch is not None:
                if isinstance(lingering, Lingering) and lingering.meter is self.meter:
                    # Still counting into this meter: take it back, do not stack another.
                    self._statements[name] = patch
                    continue
                # Another meter's, outermost again (check_lingering saw to it).
                patch.remove()
            if not callable(getattr(dialect, name, None)):
                continue
            patch = Patch(dialect, name, self._counted_statement_method)
            patch.install()
            self._statements[name] = patch

    def _counted_statement_method(self, patch: Patch) -> Callable[..., Any]:
        if patch.has_own:
            # The dialect's own attribute shadows its class's: calling it is
            # what lookup would do without us, whatever the class holds.
            counted: Callable[..., Any] = self.meter._timed_statement(
                patch.original, fingerprint_dialect(patch.owner), _LAYOUTS[patch.name] - 1
            )
            return counted
        return _following_the_class(self.meter, patch.owner, patch.name)

    def uninstall(self) -> None:
        """Remove every wrapper and listener added; give connections back to querymeter.dbapi."""
        # First of all: every pool wrapper and listener passes through from now on.
        self.pool.active = False
        dialect = self._dialect()
        lingering: dict[str, Patch] = {}
        for name, patch in self._statements.items():
            if not patch.remove():
                lingering[name] = patch
        if lingering:
            _faults.report(
                "sqlalchemy: uninstrument left a statement wrapper that another tool "
                "wrapped since; it keeps counting until that tool removes its wrapper"
            )
        try:
            self.pool.unlisten()
            self.pool.uninstall()
        except Exception as exc:  # noqa: BLE001
            _faults.report("sqlalchemy: could not remove an engine's pool accounting", exc)
        self.handover.give_back()
        if dialect is not None and vars(dialect).get(STATE_ATTRIBUTE) is self:
            if lingering:
                setattr(dialect, STATE_ATTRIBUTE, Lingering(self.meter, lingering))
            else:
                delattr(dialect, STATE_ATTRIBUTE)

    def pool_snapshot(self) -> PoolSnapshot:
        return self.pool.snapshot()


def _following_the_class(meter: Meter, dialect: Any, name: str) -> Callable[..., Any]:
    """``dialect.<name>(...)`` as its class defines it at the time of each call, counted.

    The common case costs one class lookup (CPython caches it per class) and
    one identity check: the class's attribute is the plain function found
    last time, called with the dialect, as a bound method would be.  Anything
    else (a new function, a Mock, a staticmethod, a descriptor) is resolved
    the way instance attribute lookup resolves it, on the class's MRO.  (The
    one case the identity check cannot tell apart: that very function put
    back on the class inside a ``staticmethod``.)
    """
    call = meter._call_statement
    family = fingerprint_dialect(dialect)
    # With the dialect first (a plain function), and without (bound already).
    layout = _LAYOUTS[name]
    bound_layout = layout - 1
    # The class's attribute, last seen to be a plain function (so a method).
    method_function: Any = None

    # Positional-only parameters for SQLAlchemy's calls (four, three or one
    # argument, all positional), passed on with a plain call: forwarding
    # *args/**kwargs would cost more than the counting itself.  Whatever else
    # a caller passes goes through ``more`` and ``keywords``, untouched.
    def counted(
        first: Any = _NOT_PASSED,
        second: Any = _NOT_PASSED,
        third: Any = _NOT_PASSED,
        fourth: Any = _NOT_PASSED,
        /,
        *more: Any,
        **keywords: Any,
    ) -> Any:
        nonlocal method_function
        function = getattr(type(dialect), name)
        if function is not method_function:
            found, is_function = _class_attribute(dialect, name)
            if not is_function:
                return call(
                    family,
                    bound_layout,
                    found,
                    *_passed(first, second, third, fourth),
                    *more,
                    **keywords,
                )
            method_function = function = found
        if not (more or keywords):
            if fourth is not _NOT_PASSED:
                return call(family, layout, function, dialect, first, second, third, fourth)
            if third is not _NOT_PASSED:
                return call(family, layout, function, dialect, first, second, third)
            if first is not _NOT_PASSED and second is _NOT_PASSED:
                return call(family, layout, function, dialect, first)
        return call(
            family,
            layout,
            function,
            dialect,
            *_passed(first, second, third, fourth),
            *more,
            **keywords,
        )

    # Named after the method it stands for; no __wrapped__: what it calls
    # is decided at each call.
    counted.__name__ = name
    counted.__qualname__ = f"{type(dialect).__qualname__}.{name}"
    counted.__doc__ = getattr(getattr(type(dialect), name), "__doc__", None)
    return counted


def _passed(*arguments: Any) -> tuple[Any, ...]:
    """The arguments a caller passed: those before the first parameter left at its default."""
    return tuple(argument for argument in arguments if argument is not _NOT_PASSED)


def _class_attribute(instance: Any, name: str) -> tuple[Any, bool]:
    """What ``instance.<name>`` would be if the instance did not hold it itself.

    Returns (a plain function, True), to call with the instance first, or
    (the bound or unbound callable, False) for any other attribute: bound
    through its ``__get__`` where it has one, as lookup binds it.
    """
    cls = type(instance)
    for klass in cls.__mro__:
        attribute = vars(klass).get(name, _ABSENT)
        if attribute is not _ABSENT:
            break
    else:
        raise AttributeError(f"{cls.__name__!r} object has no attribute {name!r}")
    if type(attribute) is types.FunctionType:
        return attribute, True
    bind = getattr(type(attribute), "__get__", None)
    return (attribute if bind is None else bind(attribute, instance, cls)), False


_ABSENT = object()
# The default of a parameter no caller passed: no caller can pass this object.
_NOT_PASSED = object()


def _warn_about_execute_listeners(dialect: Any) -> None:
    """Log once: a do_execute* listener that returns True runs the statement past our wrapper."""
    global _warned_about_listeners
    if _warned_about_listeners:
        return
    # Reading dialect.dispatch would create it: look only where listeners were added.
    dispatch = vars(dialect).get("dispatch")
    if dispatch is None or not getattr(dialect, "_has_events", False):
        return
    try:
        present = [
            name
            for name in ("do_execute", "do_executemany", "do_execute_no_params")
            if len(getattr(dispatch, name))
        ]
    except Exception:  # noqa: BLE001 - a dialect without DialectEvents has no such listeners
        return
    if present:
        _warned_about_listeners = True
        _logger.warning(
            "querymeter.sqlalchemy: the engine has %s event listeners; a listener that "
            "returns True executes the statement itself, and querymeter does not count "
            "it (this is logged once)",
            "/".join(present),
        )
