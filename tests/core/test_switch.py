"""The core switch: the C core unless QUERYMETER_PURE_PYTHON=1, parsed strictly."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import querymeter

from ..conftest import REQUIRE_C, load_meter_class


def implementation_with(value: str | None) -> str:
    """querymeter.IMPLEMENTATION in a fresh interpreter with QUERYMETER_PURE_PYTHON=value."""
    env = dict(os.environ)
    env.pop("QUERYMETER_PURE_PYTHON", None)
    if value is not None:
        env["QUERYMETER_PURE_PYTHON"] = value
    return subprocess.run(
        [sys.executable, "-c", "import querymeter; print(querymeter.IMPLEMENTATION)"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        timeout=60,
    ).stdout.strip()


def test_pure_python_forces_the_python_core() -> None:
    """QUERYMETER_PURE_PYTHON=1 selects the Python core."""
    assert implementation_with("1") == "python"


@pytest.mark.parametrize("value", [None, "0", "", "true", "yes", " 1"])
def test_only_exactly_1_turns_the_switch_on(value: str | None) -> None:
    """Any value but "1" keeps the C core."""
    load_meter_class("c")  # skips (or fails under REQUIRE_C) without a C core
    assert implementation_with(value) == "c"


@pytest.mark.skipif(not REQUIRE_C, reason="QUERYMETER_REQUIRE_C is not 1: C may be absent")
def test_the_c_core_is_in_use_when_required() -> None:
    """Under QUERYMETER_REQUIRE_C=1 the package imports its compiled core, not the fallback."""
    if os.environ.get("QUERYMETER_PURE_PYTHON") == "1":
        pytest.skip("QUERYMETER_PURE_PYTHON=1 asks for the Python core")
    assert querymeter.IMPLEMENTATION == "c"
    from querymeter.core import _c as _core

    assert _core.__file__ is not None
    assert _core.__file__.endswith((".so", ".pyd"))
