"""Fixtures for the SQLAlchemy integration: a meter of each core, engines, servers, cleanup."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from querymeter.meter import Meter as MeterType

from ..servers import driver, mysql_params, postgres_dsn

sqlalchemy = driver("sqlalchemy")
qs = pytest.importorskip("querymeter.sqlalchemy")
URL = sqlalchemy.engine.URL


@pytest.fixture
def meter(Meter: type[MeterType]) -> MeterType:
    """A fresh meter of the core under test (both cores, through the Meter fixture)."""
    return Meter()


def pg_url(drivername: str) -> Any:
    """A SQLAlchemy URL for the test PostgreSQL server (skips, or fails, without it)."""
    parts = dict(item.split("=", 1) for item in postgres_dsn().split())
    return URL.create(
        f"postgresql+{drivername}",
        username=parts.get("user"),
        password=parts.get("password"),
        host=parts.get("host"),
        port=int(parts["port"]) if "port" in parts else None,
        database=parts.get("dbname"),
    )


def mysql_url() -> Any:
    """A SQLAlchemy URL for the test MariaDB/MySQL server through PyMySQL."""
    params = mysql_params()
    driver("pymysql")
    return URL.create(
        "mysql+pymysql",
        username=params["user"],
        password=params["password"] or None,
        host=params["host"],
        port=params["port"],
        database=params["database"],
    )


@pytest.fixture
def make_engine() -> Iterator[Callable[..., Any]]:
    """create_engine(), with every engine made uninstrumented and disposed after the test."""
    engines: list[Any] = []

    def make(url: Any, **kwargs: Any) -> Any:
        engine = sqlalchemy.create_engine(url, **kwargs)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        qs.uninstrument(engine)
        engine.dispose()


@pytest.fixture(autouse=True)
def uninstrument_everything() -> Iterator[None]:
    """No test leaves instrument_all() on, or a driver instrumented, for the next one."""
    yield
    qs.uninstrument_all()
    dbapi = sys.modules.get("querymeter.dbapi")
    if dbapi is not None:
        for name in dbapi.SUPPORTED_DRIVERS:
            module = sys.modules.get(name)
            if module is not None:
                dbapi.uninstrument(module)
