"""A profiling session's report as Markdown and as self-contained HTML.

Takes the report's plain data (``Report.as_dict()``): the same content in
both, in the order a reader asks for it: why, what was found (the figures,
the change markers made meanwhile, the statements by time, calls and p99,
where the time went), the slowest queries, what the instrumentation cost,
and the settings that produced it.
"""

from __future__ import annotations

import datetime
import html
from collections.abc import Mapping
from typing import Any

from ._markdown import NONE, _code, _escape

__all__ = ["render_session_html", "render_session_markdown"]


def _ms(ns: float | None) -> str:
    return NONE if ns is None else f"{ns / 1e6:.3f}"


def _number(value: float | None, digits: int = 3) -> str:
    if value is None:
        return NONE
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _when(ns: int) -> str:
    moment = datetime.datetime.fromtimestamp(ns / 1e9, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _markdown_cell(text: object) -> str:
    return _escape(str(text).replace("\n", " "))


def _markdown_code(text: object) -> str:
    # In a table, a pipe ends the cell even inside a code span: escaped, GFM shows it.
    return _code(str(text).replace("\n", " ")).replace("|", "\\|")


def _sections(data: Mapping[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every table of the report, in order."""
    figures = data["figures"]
    tables: list[tuple[str, list[str], list[list[str]]]] = [
        (
            "Figures",
            ["queries", "errors", "X (queries/s)", "N", "R (ms)", "U", "S (ms)", "duration (s)"],
            [
                [
                    str(figures["queries"]),
                    str(figures["errors"]),
                    _number(figures["throughput"]),
                    _number(figures["concurrency"]),
                    _ms(
                        None if figures["response_time"] is None else figures["response_time"] * 1e9
                    ),
                    _number(figures["utilization"]),
                    _ms(None if figures["service_time"] is None else figures["service_time"] * 1e9),
                    _number(figures["duration_s"]),
                ]
            ],
        )
    ]
    if "markers" in data:  # reports saved before they kept markers have none to show
        tables.append(
            (
                "Change markers",
                ["when", "marker", "attributes"],
                [
                    [
                        _when(m["wall_ns"]),
                        m["label"],
                        ", ".join(f"{k}={v!r}" for k, v in m["attrs"].items()),
                    ]
                    for m in data["markers"]
                ],
            )
        )
    header = [
        "statement",
        "calls",
        "errors",
        "total (ms)",
        "share",
        "mean (ms)",
        "p99 (ms)",
        "rows",
    ]
    for title, key in (("by total time", "total_ns"), ("by calls", "calls"), ("by p99", "p99_ns")):
        ranked = sorted(data["statements"], key=lambda s: (-(s.get(key) or 0), s["fingerprint"]))
        tables.append(
            (
                f"Top statements {title}",
                header,
                [
                    [
                        s["fingerprint"],
                        str(s["calls"]),
                        str(s["errors"]),
                        _ms(s["total_ns"]),
                        f"{s['share'] * 100:.1f} %",
                        _ms(s["mean_ns"]),
                        _ms(s["p99_ns"]),
                        NONE if s["rows"] is None else str(s["rows"]),
                    ]
                    for s in ranked[:10]
                ],
            )
        )
    client = data["waits"]["client"]
    tables.append(
        (
            "Where the time went (client side)",
            ["waiting for", "time (ms)", "share"],
            [
                [part["name"], _ms(part["ns"]), f"{part['share'] * 100:.1f} %"]
                for part in client["parts"]
            ],
        )
    )
    server = data["waits"].get("server")
    if server:
        total = sum(server.get("by_class", {}).values()) or 1
        tables.append(
            (
                "What the database waited for (server side, sampled)",
                ["wait class", "samples", "share"],
                [
                    [name, str(count), f"{count / total * 100:.1f} %"]
                    for name, count in sorted(
                        server.get("by_class", {}).items(), key=lambda x: -x[1]
                    )
                ],
            )
        )
    samples = sorted(data["samples"], key=lambda s: -s["duration_ns"])[:10]
    tables.append(
        (
            "Slowest samples",
            ["started", "duration (ms)", "error", "rows", "tags", "sql"],
            [
                [
                    _when(s["start_wall_ns"]),
                    _ms(s["duration_ns"]),
                    s["error"] or "",
                    NONE if s["rows"] is None else str(s["rows"]),
                    ", ".join(f"{k}={v}" for k, v in s["tags"].items()),
                    s["sql"],
                ]
                for s in samples
            ],
        )
    )
    plans = data.get("plans") or []
    if plans:
        tables.append(
            (
                "Plans (EXPLAIN)",
                ["statement", "plan or note"],
                [[p["fingerprint"], p.get("plan") or p.get("note") or ""] for p in plans],
            )
        )
    return tables


def _facts(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    effect = data["observer_effect"]
    environment = data["environment"]
    versions = ", ".join(f"{k} {v}" for k, v in sorted(environment["versions"].items()))
    return [
        ("objective", data.get("objective") or "(none given)"),
        ("from", _when(data["started_wall_ns"])),
        ("to", f"{_when(data['ended_wall_ns'])} (ended by {data['ended_by']})"),
        ("verdict", data["waits"]["client"]["verdict"]),
        ("observer effect", effect["summary"]),
        ("settings", ", ".join(f"{k}={v}" for k, v in data["settings"].items())),
        ("host", f"{environment['host']} (pid {environment['pid']})"),
        ("versions", versions),
        *(("note", note) for note in data["notes"]),
    ]


def render_session_markdown(data: Mapping[str, Any]) -> str:
    """The report as Markdown."""
    lines = ["# querymeter profiling session", ""]
    lines += [f"- **{name}**: {_markdown_cell(value)}" for name, value in _facts(data)]
    for title, header, rows in _sections(data):
        lines += ["", f"## {title}", ""]
        if not rows:
            lines.append("(none)")
            continue
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for row in rows:
            cells = [_markdown_code(cell) if header[i] in ("statement", "sql") else
                     _markdown_cell(cell) for i, cell in enumerate(row)]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; width: 100%; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3em 0.6em; text-align: left;
         vertical-align: top; }
td.code { font-family: ui-monospace, monospace; white-space: pre-wrap; word-break: break-all; }
dt { font-weight: bold; float: left; clear: left; width: 10em; }
dd { margin-left: 11em; }
"""


def render_session_html(data: Mapping[str, Any]) -> str:
    """The report as one self-contained HTML page (no external resources)."""
    facts = "".join(
        f"<dt>{html.escape(name)}</dt><dd>{html.escape(str(value))}</dd>"
        for name, value in _facts(data)
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>querymeter profiling session</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>querymeter profiling session</h1>",
        f"<dl>{facts}</dl>",
    ]
    for title, header, rows in _sections(data):
        parts.append(f"<h2>{html.escape(title)}</h2>")
        if not rows:
            parts.append("<p>(none)</p>")
            continue
        head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
        body = "".join(
            "<tr>"
            + "".join(
                f'<td class="code">{html.escape(cell)}</td>'
                if header[i] in ("statement", "sql", "plan or note")
                else f"<td>{html.escape(cell)}</td>"
                for i, cell in enumerate(row)
            )
            + "</tr>"
            for row in rows
        )
        parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
