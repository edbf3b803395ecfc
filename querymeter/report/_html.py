"""The report as one self-contained HTML page with SVG charts.

No plotting library and nothing fetched: the charts are SVG written here,
the styles inline, so the file can be mailed or archived as it is.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..readings import Interval
from ..usl import Model
from ._content import COLUMNS, FitReading, Measurement, level_points, qps, read_fit

WIDTH, HEIGHT = 640, 400
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 72, 24, 44, 56


@dataclass(frozen=True)
class Series:
    """One thing drawn on a chart: measured points, or a curve."""

    label: str
    points: Sequence[tuple[float, float]]
    color: str
    kind: str = "points"  # "points", "line" or "dashed"
    #: Whether the axes stretch to show all of it; a reference line does not,
    #: and is clipped to the plot instead.
    sets_scale: bool = True


def nice_ticks(low: float, high: float, count: int = 6) -> list[float]:
    """Round tick values covering [low, high]: steps of 1, 2 or 5 times a power of ten."""
    if not (math.isfinite(low) and math.isfinite(high)) or count < 2:
        raise ValueError("nice_ticks needs a finite range and at least 2 ticks")
    if high <= low:
        high = low + 1.0
    raw_step = (high - low) / (count - 1)
    magnitude = 10.0 ** math.floor(math.log10(raw_step))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw_step)
    first = math.floor(low / step) * step
    ticks = [round(first, 12)]
    # Up to the first tick at or above `high`, so that nothing is cut off.
    while ticks[-1] < high * (1 - 1e-12):
        ticks.append(round(first + step * len(ticks), 12))
    return ticks


def _format(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000 and value == round(value):
        return f"{value:,.0f}"
    if abs(value) < 0.01 or abs(value) >= 1e9:
        return f"{value:.3g}"
    return f"{value:g}"


class Plot:
    """A chart's plot area: axes from zero to the last ticks, coordinates in the SVG."""

    __slots__ = ("height", "width", "x_max", "x_ticks", "y_max", "y_ticks")

    def __init__(self, x_ticks: Sequence[float], y_ticks: Sequence[float]) -> None:
        self.x_ticks, self.y_ticks = x_ticks, y_ticks
        self.x_max, self.y_max = x_ticks[-1], y_ticks[-1]
        self.width = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
        self.height = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM

    def px(self, x: float) -> float:
        return MARGIN_LEFT + self.width * x / self.x_max

    def py(self, y: float) -> float:
        return MARGIN_TOP + self.height * (1 - y / self.y_max)

    def axes(self, x_label: str, y_label: str) -> list[str]:
        """The grid lines with their tick labels, and the two axis titles."""
        px, py, plot_w, plot_h = self.px, self.py, self.width, self.height
        parts = [
            f'<line x1="{px(tick):.1f}" y1="{MARGIN_TOP}" x2="{px(tick):.1f}" '
            f'y2="{MARGIN_TOP + plot_h}" class="grid"/>'
            f'<text x="{px(tick):.1f}" y="{MARGIN_TOP + plot_h + 18}" '
            f'text-anchor="middle">{_format(tick)}</text>'
            for tick in self.x_ticks
        ]
        parts.extend(
            f'<line x1="{MARGIN_LEFT}" y1="{py(tick):.1f}" x2="{MARGIN_LEFT + plot_w}" '
            f'y2="{py(tick):.1f}" class="grid"/>'
            f'<text x="{MARGIN_LEFT - 8}" y="{py(tick) + 4:.1f}" '
            f'text-anchor="end">{_format(tick)}</text>'
            for tick in self.y_ticks
        )
        parts.append(
            f'<text x="{MARGIN_LEFT + plot_w / 2}" y="{HEIGHT - 12}" text-anchor="middle" '
            f'class="axis">{html.escape(x_label)}</text>'
            f'<text x="16" y="{MARGIN_TOP + plot_h / 2}" text-anchor="middle" class="axis" '
            f'transform="rotate(-90 16 {MARGIN_TOP + plot_h / 2})">{html.escape(y_label)}</text>'
        )
        return parts


def svg_chart(
    title: str, x_label: str, y_label: str, series: Sequence[Series], *, chart_id: str
) -> str:
    """An SVG line-and-points chart of the series, axes from zero, with a legend.

    ``chart_id`` must be unique in the page: it names the chart's clip path.
    """
    scaled = [s for s in series if s.sets_scale]
    xs = [x for s in scaled for x, _ in s.points if math.isfinite(x)]
    ys = [y for s in scaled for _, y in s.points if math.isfinite(y)]
    x_ticks = nice_ticks(0.0, max(xs, default=1.0))
    y_ticks = nice_ticks(0.0, max(ys, default=1.0))
    plot = Plot(x_ticks, y_ticks)
    x_max, y_max, plot_w, plot_h = plot.x_max, plot.y_max, plot.width, plot.height
    px, py = plot.px, plot.py

    clip = f"{html.escape(chart_id)}-plot"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'role="img" aria-label="{html.escape(title)}">',
        f"<title>{html.escape(title)}</title>",
        f'<clipPath id="{clip}"><rect x="{MARGIN_LEFT}" y="{MARGIN_TOP}" '
        f'width="{plot_w}" height="{plot_h}"/></clipPath>',
    ]
    parts.extend(plot.axes(x_label, y_label))
    for s in series:
        visible = [(x, y) for x, y in s.points if 0 <= x <= x_max and 0 <= y <= y_max]
        if s.kind == "points":
            for x, y in visible:
                parts.append(
                    f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="4.5" fill="{s.color}">'
                    f"<title>{html.escape(s.label)}: ({_format(x)}, {_format(y)})</title></circle>"
                )
        else:
            finite = [(x, y) for x, y in s.points if math.isfinite(x) and math.isfinite(y)]
            if len(finite) < 2:
                continue
            path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in finite)
            dash = ' stroke-dasharray="6 4"' if s.kind == "dashed" else ""
            parts.append(
                f'<polyline points="{path}" fill="none" stroke="{s.color}" '
                f'stroke-width="2"{dash} clip-path="url(#{clip})"/>'
            )
    # The legend in a row above the plot, where it cannot hide a point.
    x = MARGIN_LEFT
    y = 18
    for s in series:
        dash = ' stroke-dasharray="6 4"' if s.kind == "dashed" else ""
        marker = (
            f'<circle cx="{x + 8}" cy="{y}" r="4.5" fill="{s.color}"/>'
            if s.kind == "points"
            else f'<line x1="{x}" y1="{y}" x2="{x + 16}" y2="{y}" stroke="{s.color}" '
            f'stroke-width="2"{dash}/>'
        )
        parts.append(f'{marker}<text x="{x + 24}" y="{y + 4}">{html.escape(s.label)}</text>')
        x += 40 + 7 * len(s.label)
    parts.append("</svg>")
    return "\n".join(parts)


def _curve(model: Model, n_min: float, n_max: float, value: str) -> list[tuple[float, float]]:
    steps = 200
    points = []
    for step in range(steps + 1):
        n = n_min + (n_max - n_min) * step / steps
        y = model.throughput(n) if value == "throughput" else model.response_time(n) * 1000
        points.append((n, y))
    return points


_STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 60rem; padding: 0 1rem; color: #1f2328; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: 0.5rem 0; }
th, td { padding: 0.25rem 0.75rem; text-align: right; border-bottom: 1px solid #d0d7de; }
th { background: #f6f8fa; } td.left, th.left { text-align: left; }
svg { width: 100%; max-width: 640px; height: auto; font-size: 12px; fill: #1f2328; }
svg .grid { stroke: #e5e7eb; stroke-width: 1; } svg .axis { font-size: 13px; }
.note { color: #57606a; font-size: 0.9rem; }
dl.columns { display: grid; grid-template-columns: max-content auto; gap: 0.1rem 1rem;
             color: #57606a; font-size: 0.9rem; }
dl.columns dt { font-weight: 600; } dl.columns dd { margin: 0; }
.summary { font-size: 1.05rem; }
.warning { border-left: 4px solid #bf8700; background: #fff8c5; padding: 0.5rem 1rem; }
.warning p:first-child { font-weight: 600; }
"""


def chart_series(
    intervals: Sequence[Interval], model: Model | None, reading: FitReading
) -> tuple[list[Series], list[Series]]:
    """The two charts' series: throughput and response time against concurrency.

    The measured points of the intervals, and the model's curves: drawn as a
    result when ``reading`` says that it describes the data, dashed otherwise.
    """
    measured = [(interval.concurrency or 0.0, interval.throughput or 0.0) for interval in intervals]
    n_max = max((n for n, _ in measured), default=1.0) * 1.25
    # The model is drawn where there are measurements: below the first level
    # it would be an extrapolation of the (N - 1) terms, not a prediction.
    n_min = min([1.0, *(n for n, _ in measured if n > 0)])
    throughput_series = [Series("measured", measured, "#0969da")]
    response_series = [
        Series(
            "measured",
            [
                (interval.concurrency or 0.0, (interval.response_time or 0.0) * 1000)
                for interval in intervals
            ],
            "#0969da",
        )
    ]
    if model is not None and reading.describes_data:
        throughput_series += [
            Series("USL model", _curve(model, n_min, n_max, "throughput"), "#cf222e", "line"),
            Series(
                "linear scaling (λN)",
                [(0.0, 0.0), (n_max, model.lam * n_max)],
                "#8c959f",
                "dashed",
                sets_scale=False,
            ),
        ]
        response_series.append(
            Series("USL model", _curve(model, n_min, n_max, "response_time"), "#cf222e", "line")
        )
    elif model is not None:
        # Drawn, so that one can see how it misses, but not as a result.
        label = "USL fit: does not describe the data"
        throughput_series.append(
            Series(label, _curve(model, n_min, n_max, "throughput"), "#8c959f", "dashed")
        )
        response_series.append(
            Series(label, _curve(model, n_min, n_max, "response_time"), "#8c959f", "dashed")
        )
    return throughput_series, response_series


def render_html(
    levels: Sequence[Measurement],
    model: Model | None,
    *,
    database: str,
    implementation: str,
    duration_s: float,
    generated: str,
    fit_problem: str | None = None,
    reading: FitReading | None = None,
    notice: str | None = None,
) -> str:
    """The whole report: run details, the levels table, the model read in words, two charts.

    ``reading`` is :func:`read_fit` of the model (computed here when not
    given); ``notice`` is a sentence shown on top, such as an interruption.
    """
    if reading is None:
        reading = read_fit(model, level_points(levels), fit_problem=fit_problem)
    throughput_series, response_series = chart_series(
        [level.interval for level in levels], model, reading
    )

    rows = "\n".join(
        f"<tr><td>{level.threads}</td>{interval_cells(level.interval)}</tr>" for level in levels
    )
    columns = "\n".join(
        f"<dt>{html.escape(name)}</dt><dd>{html.escape(meaning)}</dd>" for name, meaning in COLUMNS
    )
    top = f'<div class="warning"><p>{html.escape(notice)}</p></div>' if notice else ""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>querymeter demo report</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>querymeter demo report</h1>
<p class="note">{html.escape(database)} &middot; {html.escape(implementation)} core &middot;
{duration_s:g} s per level &middot; {html.escape(generated)}</p>
{top}
<h2>Levels</h2>
<table>
<tr><th>threads</th><th>N</th><th>X (queries/s)</th><th>R (ms)</th><th>U</th><th>S (ms)</th>
<th>queries</th><th>errors</th></tr>
{rows}
</table>
{_errors_section(levels)}
<dl class="columns">
{columns}
</dl>

<h2>Universal Scalability Law</h2>
{_model_section(model, reading)}

<h2>Throughput against concurrency</h2>
{
        svg_chart(
            "Throughput against concurrency",
            "mean concurrency N",
            "throughput X (queries/s)",
            throughput_series,
            chart_id="throughput",
        )
    }

<h2>Response time against concurrency</h2>
{
        svg_chart(
            "Response time against concurrency",
            "mean concurrency N",
            "response time R (ms)",
            response_series,
            chart_id="response-time",
        )
    }
</body>
</html>
"""


def interval_cells(interval: Interval) -> str:
    """An interval's N, X, R (ms), U, S (ms), queries and errors as table cells."""
    return (
        f"<td>{_cell(interval.concurrency, '.2f')}</td>"
        f"<td>{_cell(interval.throughput, ',.0f')}</td>"
        f"<td>{_cell(_ms(interval.response_time), '.3f')}</td>"
        f"<td>{_cell(interval.utilization, '.2f')}</td>"
        f"<td>{_cell(_ms(interval.service_time), '.3f')}</td>"
        f"<td>{interval.queries:,}</td><td>{interval.errors:,}</td>"
    )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _cell(value: float | None, spec: str) -> str:
    return "&ndash;" if value is None else format(value, spec)


def _errors_section(levels: Sequence[Measurement]) -> str:
    failed = [level for level in levels if level.interval.errors]
    if not failed:
        return ""
    items = "\n".join(
        f"<li>{level.threads} threads: {level.interval.errors:,} errors"
        + (
            f"; the first: <code>{html.escape(level.first_error.splitlines()[0])}</code>"
            if level.first_error
            else ""
        )
        + "</li>"
        for level in failed
    )
    return (
        '<div class="warning"><p>The workload raised errors: they are counted in the '
        "figures above, and the workload is written to raise none.</p>\n"
        f"<ul>\n{items}\n</ul></div>"
    )


def _list(items: Sequence[str]) -> str:
    return "<ul>\n" + "\n".join(f"<li>{html.escape(item)}</li>" for item in items) + "\n</ul>"


def _model_section(model: Model | None, reading: FitReading) -> str:
    advice = f"<p>What to do:</p>\n{_list(reading.advice)}" if reading.advice else ""
    if model is None:
        return f'<div class="warning"><p>{html.escape(reading.summary)}</p>\n{advice}</div>'
    r2 = "&ndash;" if model.r_squared is None else f"{model.r_squared:.4f}"
    lam = qps(model.lam)
    coefficients = f"""<tr><th class="left">σ (contention)</th><td>{model.sigma:.4g}</td></tr>
<tr><th class="left">κ (coherency)</th><td>{model.kappa:.4g}</td></tr>
<tr><th class="left">λ (throughput at N = 1, no overhead)</th><td>{lam}</td></tr>"""
    quality = f'<tr><th class="left">R² ({model.n_points} points)</th><td>{r2}</td></tr>'
    if not reading.describes_data:
        return f"""<div class="warning"><p>{html.escape(reading.summary)}</p>
{_list(reading.problems)}
{advice}</div>
<p class="note">The fitted coefficients, for the record only:</p>
<table>
{coefficients}
{quality}
</table>"""
    peak = (
        "∞ (no peak: κ = 0)"
        if math.isinf(model.peak_concurrency)
        else (f"{model.peak_concurrency:.1f}")
    )
    max_x = "∞" if math.isinf(model.max_throughput) else qps(model.max_throughput)
    cautions = (
        f'<div class="warning">{_list(reading.cautions + reading.advice)}</div>'
        if reading.cautions or reading.advice
        else ""
    )
    return f"""<p class="summary">{html.escape(reading.summary)}</p>
{cautions}
<table>
{coefficients}
<tr><th class="left">N* (peak concurrency)</th><td>{peak}</td></tr>
<tr><th class="left">X max</th><td>{max_x}</td></tr>
<tr><th class="left">limiting factor</th><td>{model.limiting_factor}</td></tr>
{quality}
</table>"""
