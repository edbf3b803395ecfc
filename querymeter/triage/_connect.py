"""Can we connect? A read-only SELECT 1 on a connection the engine's pool has free.

The check borrows (querymeter._borrow): only a connection the pool can lend
without waiting and without opening one past its limit, counted by no meter.
The query runs on a daemon thread so that a server that does not answer costs
the caller ``timeout`` seconds, not a hang; the thread gives the connection
back to the pool whenever the answer comes.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from .._borrow import borrow_from_engine, first_line, pool_refusal

__all__ = ["Connectivity", "check_connection"]


@dataclass(frozen=True, slots=True)
class Connectivity:
    """The outcome of the connection check."""

    #: True: answered; False: failed or no answer in time; None: not checked.
    ok: bool | None
    #: Time to the answer, s (None unless answered).
    seconds: float | None
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "seconds": self.seconds, "detail": self.detail}


_NOT_CHECKED = Connectivity(None, None, "not checked (no engine given)")


def _engine_class() -> Any:
    try:
        from sqlalchemy.engine import Engine
    except ImportError:
        return None
    return Engine


def check_connection(engine: Any, timeout: float) -> Connectivity:
    """Check ``engine`` (a SQLAlchemy Engine, or None: not checked) within ``timeout`` s."""
    if engine is None:
        return _NOT_CHECKED
    engine_class = _engine_class()
    sync_engine: Any = getattr(engine, "sync_engine", engine)  # an AsyncEngine's own engine
    if engine_class is None or not isinstance(sync_engine, engine_class):
        raise TypeError(f"engine must be a SQLAlchemy Engine, got {type(engine).__name__}")
    refusal = pool_refusal(sync_engine.pool)
    if refusal is not None:
        # The pool is full: the database may be fine, the pool is not (see the pools).
        return Connectivity(None, None, f"{refusal}: not checked")
    outcome: list[Connectivity] = []
    done = threading.Event()

    def check() -> None:
        started = time.perf_counter()
        try:
            with borrow_from_engine(sync_engine) as borrowed:
                if isinstance(borrowed, str):
                    outcome.append(Connectivity(False, None, borrowed))
                    return
                cursor = borrowed.cursor()
                try:
                    cursor.execute("SELECT 1")
                    cursor.fetchall()
                finally:
                    cursor.close()
            elapsed = time.perf_counter() - started
            outcome.append(
                Connectivity(True, elapsed, f"SELECT 1 answered in {1000 * elapsed:.1f} ms")
            )
        except Exception as exc:  # noqa: BLE001 - the database's failure is the finding
            outcome.append(Connectivity(False, None, f"SELECT 1 failed: {first_line(exc)}"))
        finally:
            done.set()

    threading.Thread(target=check, name="querymeter-health-check", daemon=True).start()
    if not done.wait(timeout) or not outcome:
        return Connectivity(False, None, f"SELECT 1 got no answer within {timeout:g} s")
    return outcome[0]
