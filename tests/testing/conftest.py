"""Fixtures for the pytest plugin's tests: inner pytest runs in a pytester directory.

pytester itself is enabled by each test module (``pytest_plugins``): a
conftest below the top level may not.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import pytest

from ..servers import postgres_dsn

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


@pytest.fixture
def dsn(monkeypatch: pytest.MonkeyPatch) -> str:
    """The PostgreSQL DSN, handed to inner runs as QM_H4_DSN (skips without a server)."""
    found = postgres_dsn()
    monkeypatch.setenv("QM_H4_DSN", found)
    # Imported in this process, so that it outlives the inner runs: pytester
    # drops the modules an inner run imported, and psycopg's adapter imported
    # again beside the querymeter.dbapi of this process would be a second copy
    # with state of its own (connections marked as counting, and not counted).
    importlib.import_module("querymeter.dbapi._psycopg")
    return found


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
