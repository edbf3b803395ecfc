"""The README's quick start: two commands, the second is what CI runs, the first works."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def quick_start_commands() -> list[str]:
    """The shell commands of the README's Quick start section, in order."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", section, re.S)]


def test_the_quick_start_has_exactly_two_commands() -> None:
    """One command installs and runs the main job, one installs the test extras and tests."""
    commands = quick_start_commands()
    assert len(commands) == 2
    assert all("\n" not in command for command in commands)
    assert commands[1].endswith("python -m pytest")
    assert ".[test]" in commands[1]


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    """.ci/run contains the README's test command as one line of its own."""
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert quick_start_commands()[1] in ci_lines


def test_the_first_command_runs_the_main_job(tmp_path: Path) -> None:
    """The program the first command runs (after installing), as written, measures and reports."""
    install, run = quick_start_commands()[0].split(" && ")
    assert install.startswith("python -m pip install")
    argv = shlex.split(run)
    assert argv[:2] == ["python", "-m"]
    result = subprocess.run(
        [sys.executable, *argv[1:]],
        cwd=tmp_path,  # where the report goes
        capture_output=True,
        text=True,
        timeout=180,  # a guard against a hang; the demo takes about 20 s
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Universal Scalability Law" in result.stdout
    assert (tmp_path / "querymeter-demo.html").is_file()
