"""Benchmark helpers: per-operation times and ratios to each group's baseline, one run.

Each benchmarked function runs its operation ``OPS`` times in a loop, so that
pytest-benchmark's own call overhead does not swamp operations of 100 ns; the
baseline of each group loops the same way.  At the end of the run a table
gives, per group, every benchmark's median time per operation and its ratio
to the group's baseline, measured in the same run (timings on a shared
two-core machine are only comparable as ratios).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from querymeter.meter import Meter, meter_class

OPS = 1000  # operations per benchmarked call

REQUIRE_C = os.environ.get("QUERYMETER_REQUIRE_C", "0") == "1"
IMPLEMENTATIONS = {"c-extension": "c", "pure-python": "python"}


def load_meter_class(implementation: str) -> type[Meter]:
    """The Meter class over one core ("c" or "python"); without the C core, skip or fail."""
    try:
        return meter_class(implementation)
    except ImportError as exc:
        if REQUIRE_C:
            pytest.fail(f"the C core is not built but QUERYMETER_REQUIRE_C=1: {exc}")
        pytest.skip(f"the C core is not built: {exc}")


@pytest.fixture(params=list(IMPLEMENTATIONS), ids=list(IMPLEMENTATIONS))
def meter_type(request: pytest.FixtureRequest) -> type[Meter]:
    """The Meter class over each core."""
    return load_meter_class(IMPLEMENTATIONS[request.param])


def interleaved_medians(runs: Mapping[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median ns per operation of each run, measured in turn, round after round.

    Each run loops its operation ``OPS`` times.  On a shared machine the speed
    drifts over seconds; measuring every variant in each round spreads the drift
    over all of them, so that differences of a few percent stay visible.
    """
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter_ns()
            run()
            times[name].append((time.perf_counter_ns() - start) / OPS)
    return {name: statistics.median(values) for name, values in times.items()}


def print_interleaved(
    title: str, medians: Mapping[str, float], baseline: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Print interleaved medians with each one's ratio to, and excess over, the baseline."""
    base = medians[baseline]
    lines = [f"{title} (interleaved, medians per operation):"]
    for name, median in sorted(medians.items(), key=lambda item: item[1]):
        lines.append(
            f"  {name:28s} {median:9.1f} ns/op  {median / base:6.2f}x  {median - base:+9.1f} ns/op"
        )
    with capsys.disabled():
        print("\n" + "\n".join(lines))


def quick_mode(config: pytest.Config) -> bool:
    """Whether the benchmarks run once, to be checked rather than measured (CI)."""
    return bool(config.getoption("benchmark_disable", False))


def mark_baseline(benchmark: Any) -> None:
    """Make this benchmark the one its group's ratios are computed against."""
    benchmark.extra_info["baseline"] = True


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Print medians per operation and ratios to each group's baseline."""
    session = getattr(config, "_benchmarksession", None)
    benchmarks = [b for b in getattr(session, "benchmarks", []) if getattr(b, "stats", None)]
    if not benchmarks:
        return
    groups: dict[str, list[Any]] = defaultdict(list)
    for bench in benchmarks:
        groups[bench.group or "(none)"].append(bench)
    rows = []
    terminalreporter.section("querymeter: median per operation, ratio to the group's baseline")
    for group, members in sorted(groups.items()):
        baselines = [b for b in members if b.extra_info.get("baseline")]
        base = baselines[0].stats.median if baselines else None
        terminalreporter.write_line(f"{group}:")
        for bench in sorted(members, key=lambda b: b.stats.median):
            ops = bench.extra_info.get("ops", OPS)
            per_op_ns = bench.stats.median / ops * 1e9
            ratio = bench.stats.median / base if base else float("nan")
            extra = bench.stats.median - base if base else float("nan")
            flag = "  (baseline)" if bench.extra_info.get("baseline") else ""
            terminalreporter.write_line(
                f"  {bench.name:60s} {per_op_ns:10.1f} ns/op  {ratio:6.2f}x  "
                f"{extra / ops * 1e9:+9.1f} ns/op{flag}"
            )
            rows.append(
                {
                    "group": group,
                    "name": bench.name,
                    "ns_per_op": per_op_ns,
                    "ratio": ratio,
                    "added_ns_per_op": extra / ops * 1e9 if base else None,
                }
            )
    out = os.environ.get("QUERYMETER_BENCH_SUMMARY")
    if out:
        Path(out).write_text(json.dumps(rows, indent=2))
