"""Statement fingerprints: one normal form per statement shape, and its short id.

The rules are those of Percona Toolkit's pt-fingerprint (``QueryRewriter.pm``,
``--match-embedded-numbers``), read by a single-pass tokenizer instead of a chain of
regular expressions, so that quoting follows the dialect and no input can make it
backtrack.  Two additions: the placeholders of every DB-API paramstyle (and
PostgreSQL's ``$1``) become ``?``, like the literals they stand for; and the dialect
decides what double quotes, backslashes and dollar quotes mean.  docs/statements.md
lists every rule and every difference from pt-fingerprint.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re

__all__ = ["DIALECTS", "MAX_FINGERPRINT_CHARS", "fingerprint", "statement_id", "tables_of"]

DIALECTS = ("mysql", "mariadb", "postgresql", "sqlite")

# A fingerprint longer than this keeps a prefix and ends with a hash of the whole.
MAX_FINGERPRINT_CHARS = 2048

# The cache holds this many texts at most, and texts up to this length only: ten
# thousand repeated 1 MB statements would otherwise hold 10 GB.
_CACHE_MAX_ENTRIES = 10_000
_CACHE_MAX_TEXT_CHARS = 16_384

_ADMIN_PREFIX = "administrator command: "


def _compile(dialect: str | None) -> re.Pattern[str]:
    """The tokenizer of one dialect: one alternative per token kind, tried in order."""
    mysql_like = dialect in (None, "mysql", "mariadb")
    # The commonest tokens first: names and keywords, then punctuation that starts
    # nothing else, then numbers.  A letter before a quote may open a string.
    prefixes = "xXbBnNeE" if dialect == "postgresql" else "xXbBnN"
    parts = [
        rf"(?P<word>(?![{prefixes}]')[^\W\d][\w$]*+)",
        r"(?P<op>[^\w\s'\"`$?%:#/\-.\[])",
        r"(?P<num>(?:0[xX][0-9a-fA-F]++|0[bB][01]++"
        r"|(?:[0-9]++(?:\.[0-9]*+)?+|\.[0-9]++)(?:[eE][+-]?[0-9]++)?+)(?![\w$]))",
        r"(?P<dword>\d[\w$]*+)",  # MySQL's names may start with digits: 1st_col
    ]
    if dialect in ("mysql", "mariadb"):
        # The server reads "--" as a comment only before a space or a control character.
        parts.append(r"(?P<line>--(?=[\x00-\x20]|\Z)[^\r\n]*+|\#[^\r\n]*+)")
    elif dialect is None:
        parts.append(r"(?P<line>--[^\r\n]*+|\#[^\r\n]*+)")
    else:
        parts.append(r"(?P<line>--[^\r\n]*+)")
    if mysql_like:
        # /*! ... */ and /*M! ... */ hold SQL that the server runs: the markers go,
        # the text inside is read as SQL.
        parts.append(r"(?P<xopen>/\*M?!(?:\d{5,6})?)")
    if dialect == "postgresql":
        parts.append(r"(?P<nested>/\*)")  # nests: matched in code
    else:
        parts.append(r"(?P<block>/\*(?:[^*]++|\*(?!/))*+(?:\*/)?)")
    if mysql_like:
        parts.append(r"(?P<lit>[xXbBnN]?'(?:[^'\\]++|\\.?|'')*+'?)")
        parts.append(r"(?P<dq>\"(?:[^\"\\]++|\\.?|\"\")*+\"?)")
    else:
        if dialect == "postgresql":
            parts.append(r"(?P<estr>[eE]'(?:[^'\\]++|\\.?|'')*+'?)")
        parts.append(r"(?P<lit>[xXbBnN]?'(?:[^']++|'')*+'?)")
        parts.append(r"(?P<qident>\"(?:[^\"]++|\"\")*+\"?)")
        parts.append(r"(?P<dollar>\$(?:[^\W\d]\w*+)?\$)")
    if dialect == "sqlite":
        parts.append(r"(?P<bracket>\[[^\]]*+\]?)")
    parts += [
        r"(?P<backtick>`(?:[^`]++|``)*+`?)",
        r"(?P<cast>::)",
        # Placeholders: $1, ?, ?1, %s, %(name)s, :1, :name.  A %(...)s name is capped
        # in length, so that a text full of "%(" is not rescanned to its end each time.
        r"(?P<param>\$\d++|\?\d*+|%s|%\([^)\r\n]{0,64}\)s|:(?:[^\W\d]\w*+|\d++))",
        r"(?P<pct>%%)",
        r"(?P<op2>.)",  # any other character stands for itself
    ]
    # Whitespace is read with the token it precedes: half as many matches.
    return re.compile(r"(\s+)?+(?:" + "|".join(parts) + r"|(?P<end>\Z))", re.DOTALL)


_TOKENIZERS = {dialect: _compile(dialect) for dialect in (None, *DIALECTS)}
_COMMENT_EDGE = re.compile(r"/\*|\*/")

# Words after which a sign starts a number ("where a = -5", "select -5"), rather
# than subtracting from an operand ("a - 5").
_BEFORE_OPERAND = frozenset(
    (
        "select",
        "where",
        "and",
        "or",
        "not",
        "on",
        "by",
        "when",
        "then",
        "else",
        "case",
        "return",
        "returns",
        "values",
        "value",
        "in",
        "is",
        "like",
        "between",
        "set",
        "limit",
        "offset",
        "having",
        "distinct",
        "all",
        "any",
        "some",
        "exists",
        "div",
        "mod",
        "xor",
        "regexp",
        "rlike",
        "interval",
        "escape",
        "default",
    )
)
_LITERAL_WORDS = frozenset(("true", "false", "null"))
_LIST_WORDS = frozenset(("in", "values", "value", "limit", "order"))
_LITERAL_ONLY = frozenset(("?", ",", "(", ")"))
# After the last of repeated UNION branches, what may follow: the end of the
# statement or of its parentheses, or a clause of the whole union.
_AFTER_UNION = frozenset(("union", ")", ";", "order", "limit"))


def _tokens(text: str, dialect: str | None) -> tuple[list[str], list[bool]]:
    """The statement's tokens in normal form, and whether whitespace came before each."""
    finditer = _TOKENIZERS[dialect].finditer
    texts: list[str] = []
    spaces: list[bool] = []
    append = texts.append
    append_space = spaces.append
    space = False
    in_executable_comment = False
    size = len(text)
    pos = 0
    while pos < size:
        # One scan to the end, unless a token whose end the regex cannot see (a
        # dollar quote, a nested comment, the end of /*! */) makes it resume later.
        resume = size
        for m in finditer(text, pos):
            kind = m.lastgroup or "end"
            if m.start(1) >= 0:
                space = True
            if kind == "word" or kind == "dword":
                word = m.group(kind).lower()
                append("?" if word in _LITERAL_WORDS else word)
                append_space(space)
                space = False
            elif kind == "op" or kind == "op2":
                char = m.group(kind)
                if char == "*" and in_executable_comment and text.startswith("/", m.end()):
                    in_executable_comment = False
                    space = True
                    resume = m.end() + 1
                    break
                append(char)
                append_space(space)
                space = False
            elif kind == "line" or kind == "block":
                space = True
            elif kind == "num":
                # A sign glued to a number is part of it where no operand precedes.
                if (
                    not space
                    and texts
                    and (texts[-1] == "-" or texts[-1] == "+")
                    and not _is_operand(texts[-2] if len(texts) > 1 else None)
                ):
                    texts[-1] = "?"
                else:
                    append("?")
                    append_space(space)
                space = False
            elif kind == "lit" or kind == "param" or kind == "dq" or kind == "estr":
                append("?")
                append_space(space)
                space = False
            elif kind == "qident":
                append(m.group(kind))
                append_space(space)
                space = False
            elif kind == "xopen":
                in_executable_comment = True
                space = True
            elif kind == "dollar":
                tag = m.group(kind)
                close = text.find(tag, m.end())
                append("?")
                append_space(space)
                space = False
                if close < 0:
                    break
                resume = close + len(tag)
                break
            elif kind == "nested":
                space = True
                depth = 1
                resume = m.end()
                while depth:
                    edge = _COMMENT_EDGE.search(text, resume)
                    if edge is None:
                        resume = size
                        break
                    depth += 1 if edge.group() == "/*" else -1
                    resume = edge.end()
                break
            elif kind == "end":
                break
            elif kind == "pct":
                append("%")
                append_space(space)
                space = False
            else:  # backtick, bracket, cast
                append(m.group(kind).lower())
                append_space(space)
                space = False
        pos = resume
    return texts, spaces


def _is_operand(token: str | None) -> bool:
    """Whether a token ends an operand, so that a sign after it is an operator."""
    if token is None or token in _BEFORE_OPERAND:
        return False
    first = token[0]
    return first.isalnum() or first in '_?)]"`$'


def _closing_parens(texts: list[str]) -> dict[int, int]:
    """The index of each matched "(" mapped to the index of its ")"."""
    closes: dict[int, int] = {}
    stack: list[int] = []
    for index, token in enumerate(texts):
        if token == "(":
            stack.append(index)
        elif token == ")" and stack:
            closes[stack.pop()] = index
    return closes


def _literal_only(texts: list[str], start: int, stop: int) -> bool:
    """Whether texts[start:stop] holds literals, commas and parentheses only."""
    return _LITERAL_ONLY.issuperset(itertools.islice(texts, start, stop))


def _collapse_lists(texts: list[str], spaces: list[bool]) -> tuple[list[str], list[bool]]:
    """IN and VALUES lists of literals become (?+); LIMIT takes one ?; ORDER BY drops ASC."""
    closes = _closing_parens(texts) if "(" in texts else {}
    out: list[str] = []
    out_spaces: list[bool] = []
    size = len(texts)
    order_by = False
    index = 0
    # The ")" of each first VALUES row that is not all literals: the rows after it go.
    first_rows: set[int] = set()
    while index < size:
        token = texts[index]
        if token in ("in", "values", "value") and index + 1 < size:
            following = texts[index + 1]
            close = closes.get(index + 1) if following == "(" else None
            if close is not None and _literal_only(texts, index + 2, close):
                out += (token, "(?+)")
                out_spaces += (spaces[index], False)
                index = close + 1
                if token != "in":
                    index = _after_rows(texts, closes, index)
                continue
            if close is not None and token != "in":
                first_rows.add(close)
            elif token == "in" and following == "?":
                # "in %s", with a whole tuple for one parameter, is an IN list.
                out += (token, "(?+)")
                out_spaces += (spaces[index], False)
                index += 2
                continue
        elif token == "limit" and index + 1 < size and texts[index + 1] == "?":
            out += ("limit", "?")
            out_spaces += (spaces[index], spaces[index + 1])
            index += 2
            if index + 1 < size and texts[index] in (",", "offset") and texts[index + 1] == "?":
                index += 2
            continue
        elif token == "order" and index + 1 < size and texts[index + 1] == "by":
            order_by = True
        elif token == "asc" and order_by:
            index += 1
            continue
        out.append(token)
        out_spaces.append(spaces[index])
        index += 1
        if index - 1 in first_rows:
            index = _after_rows(texts, closes, index)
    return out, out_spaces


def _after_rows(texts: list[str], closes: dict[int, int], index: int) -> int:
    """Past the rows ", (...)" that follow a VALUES list's first row: the first stands for all."""
    size = len(texts)
    while (
        index + 1 < size and texts[index] == "," and texts[index + 1] == "(" and index + 1 in closes
    ):
        index = closes[index + 1] + 1
    return index


def _same_tokens(
    texts: list[str], spaces: list[bool], first: int, second: int, length: int
) -> bool:
    """Whether two runs of tokens match, spacing included (but before their first token)."""
    if texts[first] != texts[second]:
        return False
    for offset in range(1, length):
        if (
            texts[first + offset] != texts[second + offset]
            or spaces[first + offset] != spaces[second + offset]
        ):
            return False
    return True


def _collapse_unions(texts: list[str], spaces: list[bool]) -> tuple[list[str], list[bool]]:
    """Repeats of a SELECT joined by one kind of UNION become the first and a note."""
    size = len(texts)
    # For each "select", the next "union" at its depth and the end of its depth,
    # found in one pass, so that deep nesting costs no rescans.
    next_union: dict[int, int] = {}
    level_end: dict[int, int] = {}
    waiting: list[list[int]] = [[]]
    for index, token in enumerate(texts):
        if token == "select":
            waiting[-1].append(index)
        elif token == "union":
            for start in waiting[-1]:
                next_union[start] = index
            waiting[-1].clear()
        elif token == "(":
            waiting.append([])
        elif token == ")" and len(waiting) > 1:
            for start in waiting.pop():
                level_end[start] = index
    for level in waiting:
        for start in level:
            level_end[start] = size

    dropped = [False] * size
    notes: dict[int, str] = {}
    for start in sorted(next_union):
        if dropped[start]:
            continue
        union_at = next_union[start]
        length = union_at - start
        kind = "union all" if union_at + 1 < size and texts[union_at + 1] == "all" else "union"
        stop = level_end.get(start, size)
        cursor = union_at
        repeats = 0
        while cursor < stop and texts[cursor] == "union":
            is_all = cursor + 1 < size and texts[cursor + 1] == "all"
            if is_all != (kind == "union all"):
                break
            after = cursor + (2 if is_all else 1)
            end = after + length
            if (
                end > stop
                or not _same_tokens(texts, spaces, start, after, length)
                or (end < stop and texts[end] not in _AFTER_UNION)
            ):
                break
            repeats += 1
            cursor = end
        if repeats:
            for index in range(union_at, cursor):
                dropped[index] = True
            notes[union_at - 1] = f" /*repeat {kind}*/"
    out: list[str] = []
    out_spaces: list[bool] = []
    for index in range(size):
        if not dropped[index]:
            out.append(texts[index] + notes.get(index, ""))
            out_spaces.append(spaces[index])
    return out, out_spaces


def _normal_form(text: str, dialect: str | None) -> str:
    """The fingerprint of a text, before the bound on its length."""
    if text.startswith(_ADMIN_PREFIX):
        return text  # a server's log line, not SQL: kept as written
    texts, spaces = _tokens(text, dialect)
    while texts and texts[-1] == ";":
        texts.pop()
        spaces.pop()
    if not texts:
        return ""
    if texts[0] == "call" and len(texts) > 1:
        name = [texts[1]]
        index = 2
        while index + 1 < len(texts) and texts[index] == "." and not spaces[index]:
            name += (".", texts[index + 1])
            index += 2
        if index == len(texts) or texts[index] == "(":
            return "call " + "".join(name)
    if len(texts) == 2 and texts[0] == "use":
        return "use ?"
    if not _LIST_WORDS.isdisjoint(texts):
        texts, spaces = _collapse_lists(texts, spaces)
    if "union" in texts:
        texts, spaces = _collapse_unions(texts, spaces)
    parts = [texts[0]]
    for index in range(1, len(texts)):
        if spaces[index]:
            parts.append(" ")
        parts.append(texts[index])
    return "".join(parts)


def _bounded(form: str) -> str:
    """The form itself, or its prefix and a hash of the whole if it is too long."""
    if len(form) <= MAX_FINGERPRINT_CHARS:
        return form
    digest = hashlib.blake2b(form.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
    suffix = f" /*{digest}*/"
    return form[: MAX_FINGERPRINT_CHARS - len(suffix)] + suffix


def _fingerprint_uncached(sql: str | bytes, dialect: str | None) -> str:
    """The fingerprint, computed afresh, after checking the arguments."""
    if dialect is not None:
        if not isinstance(dialect, str):
            raise TypeError(f"dialect must be None or a str, not {type(dialect).__name__}")
        if dialect not in DIALECTS:
            raise ValueError(
                f"unknown dialect {dialect!r}: known dialects are {', '.join(DIALECTS)}"
            )
    if isinstance(sql, bytes):
        text = sql.decode("utf-8", "replace")
    elif isinstance(sql, str):
        text = sql
    else:
        raise TypeError(f"sql must be a str or bytes, not {type(sql).__name__}")
    return _bounded(_normal_form(text, dialect))


_cache: dict[object, str] = {}


def fingerprint(sql: str | bytes, dialect: str | None = None) -> str:
    """The statement's normal form: literals and placeholders as ?, lists collapsed.

    ``dialect`` is None (pt-fingerprint's rules), "mysql", "mariadb", "postgresql"
    or "sqlite".  At most ``MAX_FINGERPRINT_CHARS`` characters.  Cached by exact
    text: a repeated statement costs one dictionary lookup.
    """
    key = (sql, dialect)
    cache = _cache
    try:
        return cache[key]
    except (KeyError, TypeError):  # TypeError: an unhashable argument, rejected below
        pass
    result = _fingerprint_uncached(sql, dialect)
    if len(sql) <= _CACHE_MAX_TEXT_CHARS:
        if len(cache) >= _CACHE_MAX_ENTRIES:
            _evict_oldest_quarter(cache)
        cache[key] = result
    return result


def _evict_oldest_quarter(cache: dict[object, str]) -> None:
    """Drop the oldest quarter of the cache's entries, by insertion order."""
    try:
        oldest = list(itertools.islice(cache, _CACHE_MAX_ENTRIES // 4))
    except RuntimeError:  # another thread changed it meanwhile (free-threaded builds)
        cache.clear()
        return
    for key in oldest:
        cache.pop(key, None)


def statement_id(fingerprint: str) -> str:
    """A fingerprint's stable id: 16 hex digits of its BLAKE2b-64 hash (UTF-8)."""
    if not isinstance(fingerprint, str):
        raise TypeError(f"fingerprint must be a str, not {type(fingerprint).__name__}")
    data = fingerprint.encode("utf-8", "surrogatepass")
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def _renew_cache_in_child() -> None:
    """A forked child starts with a cache of its own, empty."""
    global _cache
    _cache = {}


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_cache_in_child)


# Fingerprints are lower case, with literals as ?: the name after these words
# is a table (a subquery's "from (" is not a name and does not match).
_TABLE = re.compile(
    r"\b(?:from|join|into|update|table)\s+((?:[a-z_][\w$]*\.)?[a-z_][\w$]*|`[^`]+`|\"[^\"]+\")"
)
_NOT_TABLES = frozenset({"select", "lateral", "only", "unnest", "generate_series", "dual"})


def tables_of(fingerprint: str) -> tuple[str, ...]:
    """The tables a fingerprint names (FROM, JOIN, INTO, UPDATE), in order, without repeats."""
    found: dict[str, None] = {}
    for match in _TABLE.finditer(fingerprint):
        name = match.group(1).strip('`"')
        if name not in _NOT_TABLES:
            found[name] = None
    return tuple(found)
