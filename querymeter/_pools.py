"""The pools of a meter's SQLAlchemy engines, as the exporters read them.

Shared by querymeter.prometheus and querymeter.otel (each of which imports
only its own library): which engines count into the meter, their pools'
readings, and a name for each pool that holds no secret.
"""

from __future__ import annotations

import sys
from typing import Any

from . import _faults
from .meter import Meter

__all__ = ["MAX_POOLS", "pool_limit", "pool_snapshots"]

#: The most pools an exporter reports (one per engine; the rest are a fault).
MAX_POOLS = 64


def pool_limit(pool: Any) -> int | None:
    """Connections the pool may open at most, None without a limit (or without a queue)."""
    if pool.size is None or pool.max_overflow is None or pool.max_overflow < 0:
        return None
    return int(pool.size + pool.max_overflow)


def pool_snapshots(meter: Meter, exporter: str) -> list[tuple[str, Any]]:
    """(pool name, PoolSnapshot) of each engine instrumented with ``meter``, by name.

    An engine whose pool cannot be read is a fault, and is left out.
    """
    # An engine can only be instrumented once querymeter.sqlalchemy is
    # imported: no need to import it (and SQLAlchemy) here.
    hooks = sys.modules.get("querymeter.sqlalchemy")
    if hooks is None:
        return []
    readings: list[tuple[str, Any]] = []
    try:
        engines = hooks.instrumented_engines()
    except Exception as exc:  # noqa: BLE001 - the meter's figures still go out
        _faults.report(f"{exporter}: could not list the instrumented engines", exc)
        return []
    for engine in engines:
        try:
            if hooks.instrumented_meter(engine) is not meter:
                continue
            readings.append((_pool_name(engine), hooks.pool_snapshot(engine)))
        except Exception as exc:  # noqa: BLE001 - the other engines still go out
            _faults.report(f"{exporter}: could not read an engine's pool", exc)
    if len(readings) > MAX_POOLS:
        _faults.report(f"{exporter}: more than {MAX_POOLS} engines; the rest are not exported")
    return _unique_names(readings)[:MAX_POOLS]


def _pool_name(engine: Any) -> str:
    """The engine's URL without its password and its query (which may hold secrets)."""
    return str(engine.url.set(query={}).render_as_string(hide_password=True))


def _unique_names(readings: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Sorted by name; engines of one URL told apart by their pool's id."""
    seen: dict[str, int] = {}
    for name, _ in readings:
        seen[name] = seen.get(name, 0) + 1
    named = [
        (name if seen[name] == 1 else f"{name}#{pool.pool_id:x}", pool) for name, pool in readings
    ]
    return sorted(named, key=lambda item: item[0])
