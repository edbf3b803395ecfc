"""The report: measured levels and a fitted model, rendered as text, JSON, Markdown or HTML.

It takes plain data (:class:`Measurement` values, each a level's worker
threads and :class:`~querymeter.readings.Interval`, and a
:class:`~querymeter.usl.Model`) and imports nothing but the readings and the
laws.  :func:`read_fit` says what the model means, once, and every format
says the same: one module per format, one ``render_<format>`` function each.
A scalability run (``querymeter.scaling.ScalingResult``, read through the
:class:`ScalingData` protocol) has its own three: ``render_scaling_text``,
``_json`` and ``_html``.
"""

from __future__ import annotations

from ._content import (
    ABOVE_MAX_TOLERANCE,
    COLUMNS,
    FAR_PEAK,
    FLAT_GROWTH,
    POOR_R_SQUARED,
    ROUGH_R_SQUARED,
    FitReading,
    Measurement,
    level_points,
    read_fit,
)
from ._html import (
    HEIGHT,
    MARGIN_BOTTOM,
    MARGIN_LEFT,
    MARGIN_RIGHT,
    MARGIN_TOP,
    WIDTH,
    Series,
    nice_ticks,
    render_html,
    svg_chart,
)
from ._json import json_document, render_json
from ._markdown import render_markdown
from ._scaling import (
    SCALING_COLUMNS,
    ScalingData,
    ScalingLevelData,
    render_scaling_html,
    render_scaling_json,
    render_scaling_text,
    scaling_document,
)
from ._session import render_session_html, render_session_markdown
from ._text import WIDTH as TEXT_WIDTH
from ._text import fit_text, render_text, text_header, text_legend, text_level

__all__ = [
    "ABOVE_MAX_TOLERANCE",
    "COLUMNS",
    "FAR_PEAK",
    "FLAT_GROWTH",
    "HEIGHT",
    "MARGIN_BOTTOM",
    "MARGIN_LEFT",
    "MARGIN_RIGHT",
    "MARGIN_TOP",
    "POOR_R_SQUARED",
    "ROUGH_R_SQUARED",
    "SCALING_COLUMNS",
    "TEXT_WIDTH",
    "WIDTH",
    "FitReading",
    "Measurement",
    "ScalingData",
    "ScalingLevelData",
    "Series",
    "fit_text",
    "json_document",
    "level_points",
    "nice_ticks",
    "read_fit",
    "render_html",
    "render_json",
    "render_markdown",
    "render_scaling_html",
    "render_scaling_json",
    "render_scaling_text",
    "render_session_html",
    "render_session_markdown",
    "render_text",
    "scaling_document",
    "svg_chart",
    "text_header",
    "text_legend",
    "text_level",
]
