"""EXPLAIN of a session's top statements: read-only, on a borrowed connection, counted nowhere.

``explain_statements(statements, source)`` asks the server for the plan of
each of the first ``limit`` distinct statements (PostgreSQL, MariaDB/MySQL,
SQLite), once per fingerprint, and hands back plain :class:`Plan` values.
Three locks keep it from changing anything:

1. Only a single ``SELECT`` (or a ``WITH`` whose words show no data-modifying
   part) is sent, and only behind a plain ``EXPLAIN``: never ``ANALYZE``,
   which would run it.  A text holding ``;`` anywhere but at its end is
   refused whatever its quoting, so no misread literal can hide a second
   statement.
2. Each EXPLAIN runs in a read-only transaction (PostgreSQL, MariaDB/MySQL)
   that is rolled back, or under ``PRAGMA query_only`` (SQLite), so that even
   a misclassified statement cannot write.
3. The connection is borrowed, never kept: from an engine's pool only when a
   connection is free without waiting, for the shortest time, and its
   statements count into no meter.

Whatever fails (a refused text, no free connection, a server error) becomes
the Plan's ``note``; nothing is raised but for bad arguments.
"""

from __future__ import annotations

import itertools
import math
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .._borrow import borrow_from_engine, first_line, quietly, uncounted

__all__ = ["Plan", "explain_statements"]

DIALECTS = ("postgresql", "mysql", "mariadb", "sqlite")

# The dialect of a DB-API connection, by the top-level module of its class.
_DRIVER_DIALECTS = {
    "sqlite3": "sqlite",
    "psycopg": "postgresql",
    "psycopg2": "postgresql",
    "pymysql": "mysql",
    "MySQLdb": "mysql",
}


@dataclass(frozen=True)
class Plan:
    """The server's plan for one statement, or a note saying why there is none."""

    fingerprint: str
    sql: str  # the text explained, as the application sent it
    dialect: str
    plan: str | None  # the plan as the server prints it, one line per row
    note: str | None  # why there is no plan (or what to know about it)

    def as_dict(self) -> dict[str, Any]:
        """The plan as plain data (JSON-ready)."""
        return {
            "fingerprint": self.fingerprint,
            "sql": self.sql,
            "dialect": self.dialect,
            "plan": self.plan,
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        """A plan from :meth:`as_dict`'s data; a missing or mistyped field raises."""
        if not isinstance(data, Mapping):
            raise TypeError(f"a plan is read from a mapping, not {type(data).__name__}")
        values: dict[str, Any] = {}
        for name, optional in (
            ("fingerprint", False),
            ("sql", False),
            ("dialect", False),
            ("plan", True),
            ("note", True),
        ):
            if name not in data:
                raise ValueError(f"a plan's data lacks the field {name!r}")
            value = data[name]
            if not (isinstance(value, str) or (optional and value is None)):
                expected = "a string or None" if optional else "a string"
                raise TypeError(f"a plan's {name!r} must be {expected}, not {value!r}")
            values[name] = value
        return cls(**values)


def explain_statements(
    statements: Sequence[tuple[str, str]],
    source: Any,
    *,
    dialect: str | None = None,
    limit: int = 5,
    timeout: float = 2.0,
) -> list[Plan]:
    """EXPLAIN the first ``limit`` distinct statements; one Plan each, in their order.

    - ``statements``: (fingerprint, SQL text) pairs, most important first; a
      fingerprint seen before is skipped, so each is explained at most once.
    - ``source``: a SQLAlchemy ``Engine`` (a connection is borrowed from its
      pool only if one is idle or can be opened without waiting, and given
      back at once); a zero-argument callable returning a new DB-API
      connection (closed after); or an open DB-API connection, which is used
      and left open (it must have no transaction of its own open: one that
      has is not touched, and every plan says so).
    - ``dialect``: ``"postgresql"``, ``"mysql"``, ``"mariadb"`` or ``"sqlite"``;
      needed for a callable, read from an engine or a known driver's connection.
    - ``timeout``: seconds each EXPLAIN may take on the server.

    A text with placeholders is explained as a generic plan on PostgreSQL
    (``EXPLAIN (GENERIC_PLAN)`` from version 16, a prepared statement before),
    with NULLs bound on SQLite (its plans do not depend on the values), and not
    at all on MariaDB/MySQL.
    """
    chosen = _distinct(statements, limit)
    if not isinstance(timeout, int | float) or isinstance(timeout, bool):
        raise TypeError(f"timeout must be a number of seconds, not {timeout!r}")
    if not (math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
    family, borrow = _source(source, dialect)
    if not chosen:
        return []
    if family is None:
        name = getattr(getattr(source, "dialect", None), "name", "?")
        note = f"EXPLAIN is not supported for the {name} dialect: not explained"
        return [Plan(fp, sql, str(name), None, note) for fp, sql in chosen]

    verdicts = [_verdict(sql, family) for _, sql in chosen]
    if not any(isinstance(verdict, _Statement) for verdict in verdicts):
        return [
            Plan(fp, sql, family, None, str(verdict))
            for (fp, sql), verdict in zip(chosen, verdicts, strict=True)
        ]
    outcomes: list[tuple[str | None, str | None]] = []
    with borrow() as borrowed:
        # One connection for every statement, given back as soon as they are done.
        explainer = None if isinstance(borrowed, str) else _Explainer(borrowed, family, timeout)
        if explainer is not None:
            explainer.prepare()
            family = explainer.dialect  # "mariadb" once the server says so
        for verdict in verdicts:
            if not isinstance(verdict, _Statement):
                outcomes.append((None, verdict))
            elif explainer is None:
                outcomes.append((None, f"{borrowed}: not explained"))
            else:
                outcomes.append(explainer.explain(verdict))
    return [
        Plan(fp, sql, family, plan, note)
        for (fp, sql), (plan, note) in zip(chosen, outcomes, strict=True)
    ]


def _distinct(statements: Sequence[tuple[str, str]], limit: int) -> list[tuple[str, str]]:
    """The first ``limit`` pairs of distinct fingerprints; bad input raises, naming it."""
    if not isinstance(limit, int) or isinstance(limit, bool):
        raise TypeError(f"limit must be an int, not {limit!r}")
    if limit < 0:
        raise ValueError(f"limit must be 0 or more, not {limit}")
    if isinstance(statements, str | bytes) or not isinstance(statements, Sequence):
        raise TypeError("statements must be a sequence of (fingerprint, sql) pairs")
    chosen: list[tuple[str, str]] = []
    seen: set[str] = set()
    for index, pair in enumerate(statements):
        if not (
            isinstance(pair, tuple)
            and len(pair) == 2
            and isinstance(pair[0], str)
            and isinstance(pair[1], str)
        ):
            raise TypeError(
                f"statements[{index}] must be a (fingerprint, sql) pair of strings, not {pair!r}"
            )
        if len(chosen) < limit and pair[0] not in seen:
            seen.add(pair[0])
            chosen.append(pair)
    return chosen


# ------------------------------------------------------------------ the source


def _source(source: Any, dialect: str | None) -> tuple[str | None, Callable[[], Any]]:
    """(the dialect, a context manager factory yielding a connection or a note)."""
    if dialect is not None and dialect not in DIALECTS:
        raise ValueError(f"dialect must be one of {', '.join(DIALECTS)}, not {dialect!r}")
    engine_class = _sqlalchemy_class("sqlalchemy.engine", "Engine")
    async_class = _sqlalchemy_class("sqlalchemy.ext.asyncio", "AsyncEngine")
    if async_class is not None and isinstance(source, async_class):
        raise TypeError(
            "an AsyncEngine cannot lend a connection outside its event loop: "
            "pass its sync_engine, or a function that opens a DB-API connection"
        )
    if engine_class is not None and isinstance(source, engine_class):
        engine: Any = source
        name = engine.dialect.name
        family = name if name in DIALECTS else None
        if dialect is not None and family is not None and _family(dialect) != family:
            raise ValueError(f"dialect {dialect!r} contradicts the engine's {name!r}")
        return family, lambda: borrow_from_engine(engine)
    if _is_connection(source):
        family = dialect or _driver_dialect(source)
        if family is None:
            raise ValueError(
                f"the dialect of a {type(source).__name__} connection is unknown: pass dialect="
            )
        return family, lambda: _given(source)
    if callable(source):
        if dialect is None:
            raise ValueError("a connection factory needs dialect= (postgresql, mysql, ...)")
        return dialect, lambda: _from_factory(source)
    raise TypeError(
        "source must be a SQLAlchemy Engine, a function returning a DB-API connection, "
        f"or a DB-API connection, not {type(source).__name__}"
    )


def _driver_dialect(connection: Any) -> str | None:
    """The dialect of a known driver's connection, or of a subclass of one."""
    # __class__, not type(): querymeter.dbapi's sqlite3 proxy reports the wrapped class.
    for klass in connection.__class__.__mro__:
        found = _DRIVER_DIALECTS.get(klass.__module__.partition(".")[0])
        if found is not None:
            return found
    return None


def _family(dialect: str) -> str:
    return "mysql" if dialect == "mariadb" else dialect


def _sqlalchemy_class(module: str, name: str) -> type | None:
    """A SQLAlchemy class if SQLAlchemy is loaded (an engine cannot exist otherwise)."""
    found = getattr(sys.modules.get(module), name, None)
    return found if isinstance(found, type) else None


def _is_connection(source: Any) -> bool:
    """A DB-API connection, told from a factory by what only a connection has."""
    return all(callable(getattr(source, name, None)) for name in ("cursor", "commit", "close"))


@contextmanager
def _from_factory(factory: Callable[[], Any]) -> Iterator[Any]:
    try:
        connection = factory()
    except Exception as exc:  # noqa: BLE001 - the factory's failure: a note
        yield f"could not open a connection: {first_line(exc)}"
        return
    try:
        with uncounted(connection) as borrowed:
            yield borrowed
    finally:
        quietly(connection.close)


@contextmanager
def _given(connection: Any) -> Iterator[Any]:
    with uncounted(connection) as borrowed:
        yield borrowed


# ------------------------------------------------------------- reading the text


class _Statement:
    """A text found explainable: the text to send and its placeholders."""

    def __init__(self, text: str, generic_text: str | None, parameters: int | list[str]) -> None:
        self.text = text  # without a trailing ";"
        # PostgreSQL: the text with $1, $2... for its placeholders; None without any.
        self.generic_text = generic_text
        # How many positional placeholders, or the names of named ones (SQLite).
        self.parameters = parameters

    @property
    def has_parameters(self) -> bool:
        return bool(self.parameters)


# Words that only a statement that writes (or a SELECT INTO) holds.
_WRITING_WORDS = frozenset(("insert", "update", "delete", "merge", "into"))

_TOKEN_PATTERNS = {
    "postgresql": re.compile(
        r"(?P<space>\s+)|(?P<line>--[^\n]*)|(?P<open>/\*)"
        r"|(?P<str>[eE]'(?:[^'\\]|\\.|'')*'|'(?:[^']|'')*')"
        r"|(?P<ident>\"(?:[^\"]|\"\")*\")"
        r"|(?P<dollar>\$(?:[^\W\d]\w*)?\$)"
        r"|(?P<word>[^\W\d][\w$]*)"
        r"|(?P<param>\$\d+|%s|%\([^)]*\)s|(?<!:):[^\W\d]\w*)"
        r"|(?P<pct>%%)|(?P<cast>::)|(?P<num>\d[\w.]*)|(?P<other>.)",
        re.DOTALL,
    ),
    "mysql": re.compile(
        r"(?P<space>\s+)|(?P<exec>/\*M?!)|(?P<block>/\*.*?\*/)"
        r"|(?P<line>(?:--(?=[\x00-\x20])|\#)[^\n]*|--\Z)"
        r"|(?P<str>'(?:[^'\\]|\\.|'')*'|\"(?:[^\"\\]|\\.|\"\")*\")"
        r"|(?P<ident>`(?:[^`]|``)*`)"
        r"|(?P<word>[^\W\d][\w$]*)"
        r"|(?P<param>%s|%\([^)]*\)s|\?)"
        r"|(?P<pct>%%)|(?P<num>\d[\w.]*)|(?P<other>.)",
        re.DOTALL,
    ),
    "sqlite": re.compile(
        r"(?P<space>\s+)|(?P<line>--[^\n]*)|(?P<block>/\*.*?(?:\*/|\Z))"
        r"|(?P<str>'(?:[^']|'')*')"
        r"|(?P<ident>\"(?:[^\"]|\"\")*\"|`(?:[^`]|``)*`|\[[^\]]*\])"
        r"|(?P<word>[^\W\d][\w$]*)"
        r"|(?P<param>\?\d*|[:@$][^\W\d]\w*)"
        r"|(?P<num>\d[\w.]*)|(?P<other>.)",
        re.DOTALL,
    ),
}


def _tokens(text: str, family: str) -> list[tuple[str, str, int]] | str:
    """(kind, text, start) of each token but spaces and comments; or why it cannot be read."""
    pattern = _TOKEN_PATTERNS[family]
    found: list[tuple[str, str, int]] = []
    position, size = 0, len(text)
    while position < size:
        match = pattern.match(text, position)
        assert match is not None  # "other" matches any character
        kind = match.lastgroup or "other"
        end = match.end()
        if kind == "open":  # PostgreSQL's block comments nest
            depth, end = 1, match.end()
            while depth and end < size:
                if text.startswith("/*", end):
                    depth, end = depth + 1, end + 2
                elif text.startswith("*/", end):
                    depth, end = depth - 1, end + 2
                else:
                    end += 1
            if depth:
                return "an unterminated comment"
        elif kind == "dollar":
            closing = text.find(match.group(), end)
            if closing < 0:
                return "an unterminated dollar-quoted string"
            kind, end = "str", closing + len(match.group())
        elif kind == "exec":
            return "a MySQL executable comment (/*! */)"
        elif kind == "other" and text[position] in "'\"`":
            return "an unterminated quoted string or name"
        if kind not in ("space", "line", "block", "open"):
            found.append((kind, text[position:end], position))
        position = end
    return found


def _verdict(sql: str, family: str) -> _Statement | str:
    """The statement to explain, or the note saying why it is not explained."""
    stripped = sql.strip()
    if stripped.endswith(";"):
        stripped = stripped[:-1].rstrip()
    # Any ";" left, even one that reads as quoted, is refused: a dialect's quoting
    # rule read differently (standard_conforming_strings, NO_BACKSLASH_ESCAPES)
    # must not be able to hide a second statement.
    if ";" in stripped:
        return "holds ';' (possibly more than one statement): not explained"
    tokens = _tokens(stripped, _family(family))
    if isinstance(tokens, str):
        return f"holds {tokens}: not explained"
    words = [text.lower() for kind, text, _ in tokens if kind == "word"]
    if not tokens or tokens[0][0] != "word" or tokens[0][1].lower() not in ("select", "with"):
        return "not a read-only SELECT: not explained"
    for index, word in enumerate(words):
        # SELECT ... FOR UPDATE / FOR NO KEY UPDATE locks rows; EXPLAIN does not.
        if word == "update" and index and words[index - 1] in ("for", "key"):
            continue
        if word in _WRITING_WORDS:
            return f"not a read-only SELECT (it holds {word.upper()}): not explained"
    params = [(text, start) for kind, text, start in tokens if kind == "param"]
    if not params:
        return _Statement(stripped, None, 0)
    if family == "sqlite":
        return _sqlite_parameters(stripped, params)
    if family == "postgresql":
        return _postgresql_generic(stripped, tokens)
    return "has parameters: not explained"


def _sqlite_parameters(text: str, params: list[tuple[str, int]]) -> _Statement | str:
    names = [name for name, _ in params]
    if all(name.startswith("?") for name in names):
        count, next_number = 0, 1
        for name in names:
            number = int(name[1:]) if len(name) > 1 else next_number
            count, next_number = max(count, number), number + 1
        return _Statement(text, None, count)
    if any(name.startswith("?") for name in names):
        return "mixes numbered and named parameters: not explained"
    return _Statement(text, None, sorted({name[1:] for name in names}))


def _postgresql_generic(text: str, tokens: list[tuple[str, str, int]]) -> _Statement | str:
    """The text with $1, $2... for its placeholders (psycopg's %s, %(name)s; :name; $n)."""
    numbers: dict[str, int] = {}
    styles: set[str] = set()
    pieces: list[str] = []
    position = 0
    for kind, token, start in tokens:
        if kind not in ("param", "pct", "str"):
            continue
        pieces.append(text[position:start])
        position = start + len(token)
        if kind == "pct" or kind == "str":
            pieces.append(token)  # "%%" is undone below, once the style is known
            continue
        if token.startswith("$"):
            styles.add("numbered")
            pieces.append(token)
            continue
        styles.add("percent" if token.startswith("%") else "colon")
        key = f"#{len(numbers)}" if token == "%s" else token
        numbers.setdefault(key, len(numbers) + 1)
        pieces.append(f"${numbers[key]}")
    pieces.append(text[position:])
    if len(styles) > 1:
        return "mixes placeholder styles: not explained"
    generic = "".join(pieces)
    if "percent" in styles:
        # psycopg's own rule: with parameters, "%%" is "%" everywhere in the text.
        generic = generic.replace("%%", "%")
    count = len(numbers)
    if "numbered" in styles:
        count = max(int(token[1:]) for kind, token, _ in tokens if kind == "param")
    return _Statement(text, generic, count)


# -------------------------------------------------------------- asking the server

_prepared_names = itertools.count(1)


class _Refused(Exception):
    """A reason not to explain on this connection, to become a note."""


class _Explainer:
    """EXPLAIN on one connection, each statement in its own read-only transaction."""

    def __init__(self, connection: Any, dialect: str, timeout: float) -> None:
        self.connection = connection
        self.dialect = dialect
        self.timeout_ms = max(1, round(timeout * 1000))
        self.server_version = 0  # PostgreSQL's server_version_num
        self.problem: str | None = None  # what stops every explain on this connection

    def prepare(self) -> None:
        """Learn what the server is; refuse a connection in the caller's transaction."""
        try:
            if self.dialect != "sqlite" and _in_transaction(self.connection):
                self.problem = "the connection has a transaction open: not explained"
                return
            cursor = self.connection.cursor()
            try:
                if self.dialect == "postgresql":
                    cursor.execute("SHOW server_version_num")
                    self.server_version = int(cursor.fetchone()[0])
                elif self.dialect in ("mysql", "mariadb"):
                    cursor.execute("SELECT VERSION()")
                    self.dialect = (
                        "mariadb" if "mariadb" in cursor.fetchone()[0].lower() else "mysql"
                    )
            finally:
                quietly(cursor.close)
            _end_transaction(self.connection, self.dialect)
        except Exception as exc:  # noqa: BLE001 - the server's: a note for every plan
            self.problem = f"could not use the connection: {first_line(exc)}"

    def explain(self, statement: _Statement) -> tuple[str | None, str | None]:
        """(the plan, None), or (None, why not)."""
        if self.problem is not None:
            return None, self.problem
        try:
            if self.dialect == "sqlite":
                return self._sqlite(statement), None
            if self.dialect == "postgresql":
                return self._postgresql(statement), None
            return self._mysql(statement), None
        except _Refused as refusal:
            return None, str(refusal)
        except Exception as exc:  # noqa: BLE001 - the server's refusal: a note
            return None, f"EXPLAIN failed: {first_line(exc)}"

    # PostgreSQL ------------------------------------------------------------

    def _postgresql(self, statement: _Statement) -> str:
        connection = self.connection
        autocommit = bool(getattr(connection, "autocommit", False))
        prepared: str | None = None
        cursor = connection.cursor()
        try:
            # In autocommit mode, BEGIN opens the transaction; otherwise the
            # driver opens it at the first statement, which sets it read-only.
            cursor.execute("BEGIN READ ONLY" if autocommit else "SET TRANSACTION READ ONLY")
            cursor.execute("SELECT current_setting('transaction_read_only')")
            if cursor.fetchone()[0] != "on":
                raise _Refused("could not make the transaction read-only: not explained")
            cursor.execute(f"SET LOCAL statement_timeout = {self.timeout_ms}")
            if statement.generic_text is None:
                cursor.execute("EXPLAIN " + statement.text)
            elif self.server_version >= 160000:
                cursor.execute("EXPLAIN (GENERIC_PLAN) " + statement.generic_text)
            else:
                # Before 16: a prepared statement, planned generically (a custom
                # plan for NULLs would fold "x = $1" to false and show nothing).
                cursor.execute("SET LOCAL plan_cache_mode = force_generic_plan")
                prepared = f"qm_explain_{next(_prepared_names)}"
                cursor.execute(f"PREPARE {prepared} AS {statement.generic_text}")
                count = statement.parameters
                nulls = ", ".join(["NULL"] * (count if isinstance(count, int) else len(count)))
                cursor.execute(f"EXPLAIN EXECUTE {prepared}({nulls})")
            return "\n".join(str(row[0]) for row in cursor.fetchall())
        finally:
            quietly(cursor.close)
            _end_transaction(connection, "postgresql")
            if prepared is not None:
                # A prepared statement outlives the transaction that made it.
                self._run_alone(f"DEALLOCATE {prepared}")

    def _run_alone(self, sql: str) -> None:
        def run() -> None:
            cursor = self.connection.cursor()
            try:
                cursor.execute(sql)
            finally:
                quietly(cursor.close)
                _end_transaction(self.connection, self.dialect)

        quietly(run)

    # MariaDB / MySQL -------------------------------------------------------

    def _mysql(self, statement: _Statement) -> str:
        if statement.has_parameters:
            raise _Refused("has parameters: not explained")
        cursor = self.connection.cursor()
        try:
            cursor.execute("START TRANSACTION READ ONLY")
            if self.dialect == "mariadb":
                seconds = self.timeout_ms / 1000
                cursor.execute(
                    f"SET STATEMENT max_statement_time={seconds:.3f} FOR EXPLAIN {statement.text}"
                )
            else:
                # MySQL's EXPLAIN plans without running the statement: no timer needed.
                cursor.execute("EXPLAIN " + statement.text)
            names = [column[0] for column in cursor.description]
            return _table(names, cursor.fetchall())
        finally:
            quietly(cursor.close)
            _end_transaction(self.connection, self.dialect)

    # SQLite ----------------------------------------------------------------

    def _sqlite(self, statement: _Statement) -> str:
        cursor = self.connection.cursor()
        try:
            cursor.execute("PRAGMA query_only")
            query_only = int(cursor.fetchone()[0])
            cursor.execute("PRAGMA busy_timeout")
            busy_timeout = int(cursor.fetchone()[0])
            try:
                cursor.execute("PRAGMA query_only = ON")
                cursor.execute(f"PRAGMA busy_timeout = {self.timeout_ms}")
                parameters: Any = (
                    dict.fromkeys(statement.parameters)
                    if isinstance(statement.parameters, list)
                    else (None,) * statement.parameters
                )
                cursor.execute("EXPLAIN QUERY PLAN " + statement.text, parameters)
                rows = cursor.fetchall()
            finally:
                cursor.execute(f"PRAGMA query_only = {query_only}")
                cursor.execute(f"PRAGMA busy_timeout = {busy_timeout}")
        finally:
            quietly(cursor.close)
        return _sqlite_tree(rows)


def _in_transaction(connection: Any) -> bool:
    """Whether the connection is inside a transaction, where the driver tells (else False)."""
    info = getattr(connection, "info", None)
    status = getattr(info, "transaction_status", None)
    if status is not None:  # psycopg and psycopg2: libpq's PQtransactionStatus, 0 = idle
        return int(status) != 0
    server_status = getattr(connection, "server_status", None)
    if isinstance(server_status, int):  # PyMySQL: SERVER_STATUS_IN_TRANS
        return bool(server_status & 1)
    return False


def _end_transaction(connection: Any, dialect: str) -> None:
    """Roll back whatever the explain opened, in the connection's own mode."""
    if dialect == "sqlite":
        return
    if dialect == "postgresql" and getattr(connection, "autocommit", False):
        # psycopg2 ignores rollback() in autocommit mode: say it to the server.
        def rollback() -> None:
            cursor = connection.cursor()
            try:
                cursor.execute("ROLLBACK")
            finally:
                cursor.close()

        quietly(rollback)
        return
    quietly(connection.rollback)


def _sqlite_tree(rows: Sequence[Sequence[Any]]) -> str:
    """EXPLAIN QUERY PLAN's (id, parent, notused, detail) rows as an indented tree."""
    depth: dict[int, int] = {0: -1}
    lines = []
    for row in rows:
        node, parent, detail = int(row[0]), int(row[1]), str(row[3])
        depth[node] = depth.get(parent, -1) + 1
        lines.append("  " * depth[node] + detail)
    return "\n".join(lines)


def _table(names: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Rows as an aligned text table, NULL for None."""
    cells = [[str(name) for name in names]] + [
        ["NULL" if value is None else str(value) for value in row] for row in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(names))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )
