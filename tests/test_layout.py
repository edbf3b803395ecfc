"""The package's layout: each module imports alone, the import graph has no cycle, layers hold."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import querymeter

PACKAGE = Path(querymeter.__file__).parent

# Which part of the package each module belongs to, by the first match of
# its dotted name's prefix (the longest prefixes first).
PARTS = {
    "querymeter._faults": "faults",
    "querymeter.core": "core",
    "querymeter.readings": "readings",
    "querymeter.interval": "readings",
    "querymeter.meter": "meter",
    "querymeter._patching": "patching",
    "querymeter.usl": "laws",
    "querymeter.trends": "laws",
    "querymeter.sampler": "sampler",
    "querymeter.dbapi": "hooks",
    "querymeter.sqlalchemy": "hooks",
    "querymeter.report._content": "report content",
    "querymeter.report": "report",
    "querymeter.demo._targets": "demo targets",
    "querymeter.demo": "demo",
    "querymeter.statements": "statements",
    "querymeter.scopes": "scopes",
    "querymeter.sessions": "sessions",
    "querymeter.middleware": "middleware",
    "querymeter.prometheus": "export",
    "querymeter._pools": "export",
    "querymeter.otel": "export",
    "querymeter.switch": "switch",
    "querymeter.markers": "markers",
    "querymeter._borrow": "borrow",
    "querymeter.recorder": "recorder",
    "querymeter.triage": "health",
    "querymeter.shared": "shared",
    "querymeter.scaling": "scaling",
    "querymeter.pytest_plugin": "testing",
    "querymeter.benchmark": "testing",
    "querymeter.autoinstrument": "autoinstrument",
    "querymeter.cli": "cli",
    "querymeter.__main__": "cli",
    "querymeter": "package",
}

# What each part may import, besides itself: data flows one way, driver ->
# hook -> core -> snapshot -> laws -> output.  The report renders plain data
# (readings and models); it knows nothing of hooks or of the demo.
MAY_IMPORT = {
    "faults": set(),
    "core": {"faults"},
    "readings": set(),
    # The meter reports a failing query observer as a fault of its own.
    "meter": {"faults", "core", "readings", "statements"},
    "patching": set(),
    "laws": set(),
    "sampler": {"faults", "meter", "readings"},
    "hooks": {"faults", "core", "readings", "meter", "patching"},
    # Statement tables and sampling: the core counts, this part names (fingerprints).
    "statements": {"faults", "core"},
    "scopes": {"faults", "core", "statements"},
    "switch": {"faults", "core"},
    "sessions": {
        "faults",
        "core",
        "meter",
        "readings",
        "statements",
        "scopes",
        "switch",
        "hooks",
        "report",
        "markers",
        "borrow",
    },
    "middleware": {"faults", "scopes"},
    # Exporters read snapshots; the engines they find in sys.modules, never by import.
    "export": {"faults", "meter", "readings", "statements"},
    # Change markers: a bounded log that timelines and reports show; needs nothing.
    "markers": set(),
    # A pool connection lent to querymeter's own statements, counted by no meter.
    "borrow": set(),
    # The flight recorder reads snapshots and statement readings into rings, and
    # turns them into baselines, anomalies, trends, forecasts and alerts.
    "recorder": {"faults", "core", "meter", "readings", "statements", "laws", "markers", "report"},
    # Health triage: the meter now, against the recorder's baseline, and the pool.
    "health": {
        "faults",
        "core",
        "meter",
        "readings",
        "statements",
        "scopes",
        "laws",
        "markers",
        "recorder",
        "export",
        "borrow",
        "shared",
    },
    # Many processes: the counters (and statements) in one shared file.
    "shared": {"faults", "core", "meter", "readings", "statements", "laws", "report"},
    # Scalability runs: a workload at each concurrency level, fitted to the USL.
    "scaling": {"faults", "core", "meter", "readings", "laws", "report"},
    # The pytest plugin and the benchmark helpers: the package's own plugin.
    "testing": {
        "package",
        "faults",
        "core",
        "meter",
        "readings",
        "statements",
        "scopes",
        "switch",
        "hooks",
        "report",
        "laws",
    },
    # Zero-code instrumentation: post-import hooks install the driver hooks.
    "autoinstrument": {
        "faults",
        "core",
        "meter",
        "readings",
        "statements",
        "hooks",
        "report",
        "laws",
        "sessions",
    },
    "report content": {"readings", "laws"},
    "report": {"readings", "laws", "report content"},
    "demo targets": set(),
    "demo": {
        "faults",
        "core",
        "readings",
        "meter",
        "sampler",
        "hooks",
        "laws",
        "demo targets",
        "statements",
        "scaling",
    },
    "cli": {
        "package",
        "faults",
        "core",
        "readings",
        "meter",
        "sampler",
        "laws",
        "report",
        "demo",
        "statements",
        "shared",
        "health",
        "autoinstrument",
        "recorder",
        "markers",
    },
    "package": {
        "laws",
        "faults",
        "core",
        "readings",
        "meter",
        "statements",
        "scopes",
        "switch",
        "sessions",
        "markers",
        "recorder",
        "health",
        "shared",
        "scaling",
        "autoinstrument",
    },
}


def part_of(module: str) -> str:
    """The part a dotted module name belongs to."""
    for prefix in sorted(PARTS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return PARTS[prefix]
    raise AssertionError(f"{module} belongs to no part: add it to PARTS")


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    # The C core is a compiled module; its stub stands for it.
    found["querymeter.core._c"] = PACKAGE / "core" / "_c.pyi"
    return found


def imports(module: str, path: Path, *, top_level_only: bool) -> set[str]:
    """The package's modules that a module imports (at top level only, or anywhere)."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.If) and top_level_only:
            continue  # `if TYPE_CHECKING:` and platform guards
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("querymeter"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("querymeter"):
                continue
            known = modules()
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                found.add(candidate if candidate in known else target)
    found.discard(module)
    return found


@pytest.mark.parametrize("module", sorted(modules()))
def test_each_module_keeps_to_its_layer(module: str) -> None:
    """A module imports only from the parts below its own, anywhere in its code."""
    part = part_of(module)
    for target in imports(module, modules()[module], top_level_only=False):
        target_part = part_of(target)
        assert target_part == part or target_part in MAY_IMPORT[part], (
            f"{module} ({part}) imports {target} ({target_part})"
        )


def test_the_import_graph_has_no_cycle() -> None:
    """No chain of top-level imports leads from a module back to itself."""
    known = modules()
    graph = {
        name: imports(name, path, top_level_only=True) & set(known) for name, path in known.items()
    }
    # The package's own __init__ runs first whatever is imported: not an edge.
    for targets in graph.values():
        targets.discard("querymeter")
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == 2:
            return
        assert state.get(name) != 1, "import cycle: " + " -> ".join([*trail, name])
        state[name] = 1
        for target in sorted(graph[name]):
            visit(target, [*trail, name])
        state[name] = 2

    for name in sorted(graph):
        visit(name, [])


def test_each_module_imports_alone_in_a_fresh_interpreter() -> None:
    """Every module imports first in a new interpreter, without the rest imported before it."""
    names = [name for name in sorted(modules()) if name != "querymeter.__main__"]
    script = (
        "import importlib, subprocess, sys\n"
        "failed = []\n"
        "for name in sys.argv[1:]:\n"
        "    result = subprocess.run([sys.executable, '-W', 'ignore::DeprecationWarning',\n"
        "                             '-c', f'import {name}'], capture_output=True, text=True)\n"
        "    if result.returncode:\n"
        "        failed.append((name, result.stderr.strip().splitlines()[-1:]))\n"
        "print(failed)\n"
        "sys.exit(1 if failed else 0)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, *names], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_core_and_the_report_import_no_hook_and_no_demo() -> None:
    """Importing the core, the laws or the report loads no hook, no demo and no driver."""
    code = (
        "import sys, querymeter, querymeter.report, querymeter.usl, querymeter.core\n"
        "loaded = [m for m in sys.modules if m.startswith(('querymeter.dbapi', "
        "'querymeter.sqlalchemy', 'querymeter.demo', 'sqlalchemy', 'psycopg'))]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
