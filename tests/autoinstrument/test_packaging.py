"""The bootstrap sitecustomize is package data: a non-editable install ships it."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

from querymeter.autoinstrument import bootstrap_path

ROOT = Path(__file__).resolve().parent.parent.parent


def test_the_bootstrap_sitecustomize_is_declared_as_package_data() -> None:
    """The package data of querymeter.autoinstrument matches bootstrap/sitecustomize.py."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["querymeter.autoinstrument"]
    package = Path(bootstrap_path()).parent  # querymeter/autoinstrument/
    shipped = (Path(bootstrap_path()) / "sitecustomize.py").relative_to(package).as_posix()
    assert any(fnmatch.fnmatch(shipped, pattern) for pattern in patterns)
    assert (package / shipped).is_file()


def test_wrapt_is_the_auto_extra_and_a_test_dependency() -> None:
    """wrapt comes with querymeter[auto] and querymeter[test], never with the core."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["dependencies"] == []
    for extra in ("auto", "test"):
        assert any(dep.startswith("wrapt") for dep in project["optional-dependencies"][extra])
