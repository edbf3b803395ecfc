"""``python -m querymeter.autoinstrument --pythonpath``: the folder to put first on PYTHONPATH.

With it there and ``QUERYMETER_AUTO=1``, every Python program started in that
environment is instrumented as it starts (see docs/autoinstrument.md)::

    BOOTSTRAP="$(python -m querymeter.autoinstrument --pythonpath)"
    export PYTHONPATH="$BOOTSTRAP${PYTHONPATH:+:$PYTHONPATH}"
    export QUERYMETER_AUTO=1
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import bootstrap_path


def main(argv: Sequence[str] | None = None) -> int:
    """Print the bootstrap folder; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m querymeter.autoinstrument",
        description="Print the folder that holds querymeter's sitecustomize: put it first on "
        "PYTHONPATH and set QUERYMETER_AUTO=1 to instrument every Python program started "
        "there. To run one program, use: querymeter run -- python app.py",
    )
    parser.add_argument(
        "--pythonpath", action="store_true", help="print the folder to put on PYTHONPATH"
    )
    args = parser.parse_args(argv)
    if not args.pythonpath:
        parser.print_usage(sys.stderr)
        return 2
    print(bootstrap_path())
    return 0


if __name__ == "__main__":
    sys.exit(main())
