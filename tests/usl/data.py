"""The published (N, X) data sets in tests/data/usl, read as points."""

from __future__ import annotations

import csv
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "data" / "usl"


def load(name: str) -> list[tuple[float, float]]:
    """The (N, X) points of one data set, in the file's order."""
    with (DATA / name).open(newline="") as fh:
        return [(float(row["N"]), float(row["X"])) for row in csv.DictReader(fh)]
