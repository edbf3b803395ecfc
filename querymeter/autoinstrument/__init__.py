"""Zero-code instrumentation: drivers and SQLAlchemy instrumented when the application imports them.

>>> import querymeter
>>> querymeter.autoinstrument()            # every supported driver, and SQLAlchemy
>>> import sqlite3                         # instrumented as it is imported
>>> querymeter.autoinstrument.undo()       # and taken out again

``querymeter.autoinstrument`` is an object you call (``drivers=[...]``
restricts it) with an ``undo()``; ``querymeter.uninstrument_all()`` undoes it
too.  ``querymeter run -- python app.py`` and ``QUERYMETER_AUTO=1`` do it
without changing the program: a ``sitecustomize`` that querymeter puts on the
program's ``PYTHONPATH`` (``python -m querymeter.autoinstrument --pythonpath``
prints its folder) turns it on as the interpreter starts, and prints the
figures at exit.  See docs/autoinstrument.md.

Importing this module imports neither wrapt nor a driver.
"""

from __future__ import annotations

from ._hooks import SQLALCHEMY, TARGETS, AutoInstrument

__all__ = ["SQLALCHEMY", "TARGETS", "AutoInstrument", "autoinstrument", "bootstrap_path", "undo"]

#: ``querymeter.autoinstrument``: call it to turn it on, ``.undo()`` to turn it off.
autoinstrument = AutoInstrument()

#: Turn autoinstrument off (also ``querymeter.autoinstrument.undo()``).
undo = autoinstrument.undo


def bootstrap_path() -> str:
    """The folder holding the ``sitecustomize`` to put first on a program's ``PYTHONPATH``."""
    from ._startup import BOOTSTRAP

    return str(BOOTSTRAP)
