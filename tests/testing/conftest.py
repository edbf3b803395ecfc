"""Fixtures for the pytest plugin's tests: inner pytest runs in a pytester directory.

pytester itself is enabled by each test module (``pytest_plugins``): a
conftest below the top level may not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

# What every inner run is held to, as this repository's own suite is.
INNER_INI = """
[pytest]
addopts = -p no:cacheprovider --strict-markers --strict-config
filterwarnings = error
"""


@pytest.fixture
def inner(pytester: pytest.Pytester) -> pytest.Pytester:
    """A pytester directory with a strict ini, for inner runs of the plugin."""
    pytester.makeini(INNER_INI)
    return pytester


def read_json(path: Path) -> Any:
    """The JSON file an inner run wrote."""
    return json.loads(path.read_text(encoding="utf-8"))


def failure_text(result: pytest.RunResult, test: str) -> str:
    """The failure section of one inner test, as pytest printed it."""
    text = "\n".join(result.outlines)
    marker = f" {test} "
    start = next(i for i, line in enumerate(result.outlines) if marker in line and "___" in line)
    lines = []
    for line in result.outlines[start + 1 :]:
        if line.startswith(("___", "===")) or (" ___" in line and "___ " in line):
            break
        lines.append(line)
    assert lines, text
    return "\n".join(lines)
