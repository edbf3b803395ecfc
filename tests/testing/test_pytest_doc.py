"""docs/pytest.md: its example files run as shown, and print the lines it shows."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from .conftest import read_json

pytest_plugins = ["pytester"]

DOC = Path(__file__).resolve().parents[2] / "docs" / "pytest.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)
# A number with a fraction or an exponent (a time or a ratio), and overhead()'s
# calibrated calls per round: different in every run.
MEASURED = re.compile(r"\d+\.\d+(e-?\d+)?x?|\d+e-?\d+|(?<=rounds of )\d+")


# JSON fields that differ from run to run.
MEASURED_FIELDS = ("seconds", "seconds_per_round", ".started_ns", ".querymeter", ".core")


def fences() -> list[tuple[str, str, str]]:
    """Each fenced block of the doc: (language, text, the prose just before it), in order."""
    text = DOC.read_text()
    blocks, end = [], 0
    for match in FENCE.finditer(text):
        blocks.append((match[1], match[2], text[end : match.start()]))
        end = match.end()
    return blocks


def measured_apart(line: str) -> str:
    """A line with its measured numbers (times, ratios) replaced."""
    return MEASURED.sub("#", line.rstrip())


def same_shape(shown: Any, real: Any, where: str = "") -> None:
    """The JSON the doc shows has the real one's fields and values, measured numbers aside."""
    assert type(shown) is type(real), where
    if isinstance(shown, dict):
        assert list(shown) == list(real), where
        for key in shown:
            same_shape(shown[key], real[key], f"{where}.{key}")
    elif isinstance(shown, list):
        assert len(shown) == len(real), where
        for index, (a, b) in enumerate(zip(shown, real, strict=True)):
            same_shape(a, b, f"{where}[{index}]")
    elif where.endswith(MEASURED_FIELDS):
        pass  # a time, or the version and core of the run that made the doc
    else:
        assert shown == real, where


def test_the_docs_examples_run_and_print_what_they_show(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each example file of docs/pytest.md, run with the command shown after it, prints every
    line the doc shows, and the JSON shown has the real file's fields and counts."""
    # Lines of output the terminal width would wrap or pad differently.
    monkeypatch.setenv("COLUMNS", "80")
    # On CI (CI or BUILD_NUMBER set) pytest prints the short summary's messages
    # whole instead of cut to the width, as a person's terminal shows them.
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("BUILD_NUMBER", raising=False)
    ran = 0
    last_output: list[str] = []
    for language, body, before in fences():
        first, _, rest = body.partition("\n")
        if language in ("python", "ini") and re.fullmatch(r"# [\w.]+\.(py|ini)", first):
            (inner.path / first[2:]).write_text(rest if language == "ini" else body)
        elif language == "console":
            command, *shown = body.splitlines()
            args = command.removeprefix("$ ").split()
            if args[0] == "pytest":
                result = inner.runpytest_subprocess(*args[1:])
                output = result.outlines
            else:
                assert args[0] == "python", command
                done = subprocess.run(
                    [sys.executable, *args[1:]],
                    cwd=inner.path,
                    capture_output=True,
                    text=True,
                    check=True,
                    timeout=300,
                )
                output = done.stdout.splitlines()
            last_output = output
            real = Counter(measured_apart(line) for line in output)
            missing = Counter(measured_apart(line) for line in shown) - real
            assert not missing, "\n".join(output)
            ran += 1
        elif language == "json":
            # The file the command before it wrote: the one the prose names, if any.
            named = re.findall(r"`([\w.]+\.json)`", before)
            path = inner.path / (named[-1] if named else "querymeter.json")
            real_document = read_json(path)
            if path.name == "bench.json":
                real_document = real_document["benchmarks"][0]["extra_info"]
            same_shape(json.loads(body), real_document)
            ran += 1
    assert ran >= 7, last_output
