"""Running real programs in child processes, with and without querymeter."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

#: ``querymeter run``, as the installed command runs it.
RUN = [sys.executable, "-m", "querymeter", "run"]
TIMEOUT_S = 120


def clean_environment(implementation: str | None = None) -> dict[str, str]:
    """This process's environment without querymeter's variables, for the given core."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUERYMETER_AUTO")}
    env.pop("PYTHONPATH", None)
    if implementation is not None:
        env["QUERYMETER_PURE_PYTHON"] = "1" if implementation == "python" else "0"
    return env


def write_program(folder: Path, source: str, name: str = "app.py") -> Path:
    """Write a program's source to a file in ``folder``; returns its path."""
    path = folder / name
    path.write_text(textwrap.dedent(source))
    return path


def run(
    command: Sequence[str], env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run a command to its end; stdout and stderr as bytes."""
    return subprocess.run(
        list(command), env=env, cwd=cwd, capture_output=True, timeout=TIMEOUT_S, check=False
    )
