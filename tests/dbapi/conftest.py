"""Fixtures for the DB-API hooks: a meter of each core, servers, and clean drivers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import querymeter.dbapi
from querymeter.meter import Meter as MeterType

from ..servers import mysql_params, postgres_dsn


@pytest.fixture
def meter(Meter: type[MeterType]) -> MeterType:
    """A fresh meter of the core under test (both cores, through the Meter fixture)."""
    return Meter()


@pytest.fixture
def pg_dsn() -> str:
    """The PostgreSQL DSN (skips, or fails under REQUIRE_SERVERS, without a server)."""
    return postgres_dsn()


@pytest.fixture
def mysql() -> dict[str, Any]:
    """PyMySQL connect() arguments (skips, or fails under REQUIRE_SERVERS, without a server)."""
    return mysql_params()


@pytest.fixture(autouse=True)
def uninstrument_everything() -> Iterator[None]:
    """No test leaves a driver instrumented for the next one."""
    yield
    import sys

    for name in querymeter.dbapi.SUPPORTED_DRIVERS:
        module = sys.modules.get(name)
        if module is not None:
            querymeter.dbapi.uninstrument(module)
