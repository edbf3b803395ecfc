"""A flight recorder's timeline as one self-contained HTML page with SVG charts.

It renders the plain data of a recorder's JSON dump (see
``querymeter.recorder``): per resolution, throughput, concurrency, response
time, utilization and errors against wall time, each change marker as a
vertical line, and the top statements of the worst minute.  Nothing is
fetched: the charts are SVG written here, the styles inline.
"""

from __future__ import annotations

import datetime
import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

from ._html import _STYLE, HEIGHT, MARGIN_LEFT, MARGIN_TOP, WIDTH, Plot, nice_ticks

__all__ = ["render_timeline_html", "timeline_chart"]

#: The charts of a resolution: (title, figure in the dump, scale, unit).
CHARTS: tuple[tuple[str, str, float, str], ...] = (
    ("Throughput", "throughput", 1.0, "queries/s"),
    ("Concurrency", "concurrency", 1.0, "mean queries in flight"),
    ("Response time", "response_time", 1000.0, "ms"),
    ("Utilization", "utilization", 1.0, "0..1"),
    ("Errors", "error_rate", 1.0, "errors/s"),
)
_LINE = "#0969da"
_MARKER = "#cf222e"


def _when(ns: int) -> str:
    moment = datetime.datetime.fromtimestamp(ns / 1e9, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def timeline_chart(
    title: str,
    y_label: str,
    points: Sequence[tuple[float, float | None]],
    markers: Sequence[tuple[float, str]],
    *,
    x_span: float,
    x_label: str,
) -> str:
    """An SVG line chart of (x, y) points from x = 0 to ``x_span``, a gap where y is
    None, and a dashed vertical line with a tooltip for each (x, label) marker."""
    ys = [y for _, y in points if y is not None and math.isfinite(y)]
    x_ticks = nice_ticks(0.0, max(x_span, 1e-9))
    y_ticks = nice_ticks(0.0, max(ys, default=1.0) or 1.0)
    plot = Plot(x_ticks, y_ticks)
    x_max, plot_h = plot.x_max, plot.height
    px, py = plot.px, plot.py

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'role="img" aria-label="{html.escape(title)}">',
        f"<title>{html.escape(title)}</title>",
        f'<text x="{MARGIN_LEFT}" y="20" class="axis">{html.escape(title)}</text>',
    ]
    parts.extend(plot.axes(x_label, y_label))
    # One polyline per run of defined values: an undefined figure is a gap, not a zero.
    run: list[str] = []
    runs: list[list[str]] = [run]
    for x, y in points:
        if y is None or not math.isfinite(y):
            run = []
            runs.append(run)
        else:
            run.append(f"{px(x):.1f},{py(y):.1f}")
    for line in runs:
        if len(line) == 1:
            x_text, y_text = line[0].split(",")
            parts.append(f'<circle cx="{x_text}" cy="{y_text}" r="2" fill="{_LINE}"/>')
        elif line:
            parts.append(
                f'<polyline points="{" ".join(line)}" fill="none" stroke="{_LINE}" '
                'stroke-width="1.5"/>'
            )
    for x, label in markers:
        if not 0 <= x <= x_max:
            continue
        parts.append(
            f'<g class="marker"><line x1="{px(x):.1f}" y1="{MARGIN_TOP}" x2="{px(x):.1f}" '
            f'y2="{MARGIN_TOP + plot_h}" stroke="{_MARKER}" stroke-width="1.5" '
            f'stroke-dasharray="4 3"/><title>{html.escape(label)}</title></g>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def _ms(ns: float | None) -> str:
    return "&ndash;" if ns is None else f"{ns / 1e6:,.3f}"


def _worst_section(worst: Mapping[str, Any] | None) -> str:
    if worst is None:
        return '<p class="note">No step recorded yet.</p>'
    figures = worst["figures"]
    response = figures["response_time"]
    head = (
        f"<p>{_when(worst['start_wall_ns'])} to {_when(worst['end_wall_ns'])} "
        f"({worst['seconds']:g} s step): {figures['queries']:,} queries, "
        f"{figures['errors']:,} errors, mean concurrency {figures['concurrency'] or 0:.3g}, "
        "response time " + ("&ndash;" if response is None else f"{response * 1000:.3f} ms") + "</p>"
    )
    statements = worst.get("statements")
    if statements is None:
        return head + '<p class="note">The meter had no statement table in this step.</p>'
    rows = []
    for stats in statements["statements"]:
        rows.append(
            "<tr>"
            f'<td class="left"><code>{html.escape(stats["statement_id"])}</code></td>'
            f"<td>{stats['calls']:,}</td><td>{stats['errors']:,}</td>"
            f"<td>{_ms(stats['total_ns'])}</td><td>{_ms(stats['mean_ns'])}</td>"
            f"<td>{_ms(stats['p99_ns'])}</td>"
            f'<td class="left"><code>{html.escape(stats["fingerprint"][:200])}</code></td>'
            "</tr>"
        )
    rest = statements["rest"]
    if statements["rest_statements"]:
        rows.append(
            f'<tr><td class="left">{statements["rest_statements"]:,} others</td>'
            f"<td>{rest['calls']:,}</td><td>{rest['errors']:,}</td>"
            f"<td>{_ms(rest['total_ns'])}</td><td>{_ms(rest['mean_ns'])}</td>"
            '<td>&ndash;</td><td class="left">(summed)</td></tr>'
        )
    return (
        head + '<table class="statements">\n<tr><th class="left">id</th><th>calls</th>'
        "<th>errors</th><th>time (ms)</th><th>mean (ms)</th><th>p99 (ms)</th>"
        '<th class="left">statement</th></tr>\n' + "\n".join(rows) + "\n</table>"
    )


def render_timeline_html(document: Mapping[str, Any]) -> str:
    """The whole timeline page of a recorder's dump (its plain data)."""
    markers = document["markers"]
    sections = []
    for resolution in document["resolutions"]:
        steps = resolution["steps"]
        seconds = resolution["seconds"]
        heading = (
            f"<h2>Every {seconds:g} s ({len(steps):,} of {resolution['capacity']:,} steps)</h2>"
        )
        if not steps:
            sections.append(heading + '<p class="note">No step recorded yet.</p>')
            continue
        origin = steps[0]["start_wall_ns"]
        span = (steps[-1]["end_wall_ns"] - origin) / 1e9
        x_label = f"seconds since {_when(origin)}"
        marks = [
            ((marker["wall_ns"] - origin) / 1e9, f"{_when(marker['wall_ns'])} {marker['label']}")
            for marker in markers
        ]
        charts = []
        for title, figure, scale, unit in CHARTS:
            points = []
            for step in steps:
                value = step["figures"][figure]
                x = (step["end_wall_ns"] - origin) / 1e9
                points.append((x, None if value is None else value * scale))
            charts.append(
                timeline_chart(
                    f"{title} every {seconds:g} s",
                    f"{title.lower()} ({unit})",
                    points,
                    marks,
                    x_span=span,
                    x_label=x_label,
                )
            )
        sections.append(heading + "\n" + "\n".join(charts))
    marker_rows = "\n".join(
        f'<tr><td class="left">{_when(marker["wall_ns"])}</td>'
        f'<td class="left">{html.escape(marker["label"])}</td>'
        f'<td class="left">'
        + html.escape(", ".join(f"{key}={value!r}" for key, value in marker["attrs"].items()))
        + "</td></tr>"
        for marker in markers
    )
    marker_table = (
        '<table class="markers">\n<tr><th class="left">when</th><th class="left">marker</th>'
        f'<th class="left">attributes</th></tr>\n{marker_rows}\n</table>'
        if markers
        else '<p class="note">No change marker in the recorder\'s span.</p>'
    )
    worst = document.get("worst_step")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>querymeter flight recorder timeline</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>querymeter flight recorder timeline</h1>
<p class="note">process {document["pid"]} &middot; {html.escape(document["implementation"])} core
&middot; written {_when(document["written_wall_ns"])}</p>
<h2>Change markers</h2>
{marker_table}
<h2>The worst minute: its top statements</h2>
{_worst_section(worst)}
{"".join(sections)}
</body>
</html>
"""
