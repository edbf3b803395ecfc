"""Deprecated module path: Interval and check_readings live in querymeter.readings.

``querymeter.Interval`` is the public name; this module stays so that older
imports keep working, with a DeprecationWarning.
"""

from __future__ import annotations

import warnings

from .readings import Interval, check_readings

__all__ = ["Interval", "check_readings"]

warnings.warn(
    "querymeter.interval is deprecated: use querymeter.Interval (or querymeter.readings.Interval)",
    DeprecationWarning,
    stacklevel=2,
)
