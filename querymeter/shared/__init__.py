"""Many processes: one set of counters (and one statement table) shared through a file.

See docs/processes.md.  ``SharedMeter(path)`` is a meter in every respect whose
counters every process that opens ``path`` shares; ``slots()`` gives each
process's own share.
"""

from __future__ import annotations

from ._meter import SharedMeter, SharedMeterError, SlotReading, shared_meter_class

__all__ = ["SharedMeter", "SharedMeterError", "SlotReading", "shared_meter_class"]
