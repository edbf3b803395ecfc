"""querymeter's ``sitecustomize``: turn autoinstrument on as the interpreter starts, if asked.

Python imports ``sitecustomize`` at start-up from the first folder of
``sys.path`` that has one; ``querymeter run`` (or you, for ``QUERYMETER_AUTO=1``)
puts this folder first on ``PYTHONPATH``.  With ``QUERYMETER_AUTO=1`` it hands
over to ``querymeter.autoinstrument``; then it imports the ``sitecustomize``
that the environment had without it, if any, so that one still runs.  Nothing
here raises into the program: a fault is one line on stderr.

Imported under another name (as a module of the package), it does nothing.
"""

import os
import sys


def _start() -> None:
    if os.environ.get("QUERYMETER_AUTO") != "1":
        return
    try:
        from querymeter.autoinstrument import _startup
    except Exception as exc:  # noqa: BLE001 - another interpreter, without querymeter
        sys.stderr.write(
            f"querymeter: cannot measure this program: {sys.executable} cannot import "
            f"querymeter ({type(exc).__name__}: {exc})\n"
        )
        return
    _startup.start()


def _chain() -> None:
    """Import the sitecustomize that the path has besides this one, as site.py would have."""
    import importlib

    ours = sys.modules.pop("sitecustomize", None)
    try:
        importlib.import_module("sitecustomize")
    except ImportError as exc:
        if exc.name != "sitecustomize":
            raise  # theirs failed: site.py says so, as it would without us
        if ours is not None:
            sys.modules["sitecustomize"] = ours


if __name__ == "sitecustomize":
    _here = os.path.dirname(os.path.abspath(__file__))
    # Out of the program's path first: it sees the path it would have had, and
    # the import below finds the next sitecustomize, not this one again.
    sys.path[:] = [entry for entry in sys.path if not entry or os.path.abspath(entry) != _here]
    try:
        _start()
    except Exception as _exc:  # noqa: BLE001 - never the program's problem
        sys.stderr.write(f"querymeter: could not start: {type(_exc).__name__}: {_exc}\n")
    _chain()
