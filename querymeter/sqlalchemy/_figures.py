"""The pool's readings under their former module name: see ``_pool_readings``.

Kept until every import names ``_pool_readings``.
"""

from __future__ import annotations

from ._pool_readings import PoolInterval, PoolSnapshot

__all__ = ["PoolInterval", "PoolSnapshot"]
