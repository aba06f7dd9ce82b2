"""Server-side SVG for the chart models of :mod:`shared.dashboard.charts`: pure Python, no dependency.

The markup is self-contained (colours inline, no script, no font download), so the same string serves
the dashboard's pages and the HTML files saved under an experiment's ``plots/``. Every mark carries a
``<title>`` (the browser's tooltip) and every chart a ``data-chart`` name and a ``data-marks`` count.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from html import escape

from shared.dashboard.charts import BarChart, Chart, ParallelChart, Series, XYChart

Scale = Callable[[float], float]
"""A chart axis: data value to pixel."""

WIDTH, HEIGHT = 640, 320
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 28, 44
COLOURS = {
    "completed": "#2563eb",
    "best": "#dc2626",
    "pruned": "#d97706",
    "failed": "#6b7280",
    "running": "#16a34a",
}
FONT = 'font-family="system-ui, sans-serif" font-size="11"'


def render(chart: Chart) -> str:
    """The chart as one ``<svg>`` element."""
    if not chart.has_data:
        body, marks = _text(WIDTH / 2, HEIGHT / 2, chart.empty, anchor="middle", fill="#6b7280"), 0
    elif isinstance(chart, XYChart):
        body, marks = _xy(chart)
    elif isinstance(chart, ParallelChart):
        body, marks = _parallel(chart)
    else:
        body, marks = _bars(chart)
    left_out = getattr(chart, "left_out", 0)
    if left_out:
        note = f"{left_out} value(s) left out: not finite or beyond ±1e300"
        body += _text(WIDTH - RIGHT, 16, note, anchor="end", fill="#b45309")
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" data-chart="{chart.name}" data-marks="{marks}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" '
        f'aria-label="{escape(chart.title)}" {FONT}>'
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>'
        f"{_text(LEFT, 16, chart.title, weight='600', size=13)}{body}</svg>"
    )


def nice_ticks(lo: float, hi: float, count: int = 5, *, integer: bool = False) -> list[float]:
    """Round tick values covering ``lo``..``hi`` (steps of 1, 2 or 5 times a power of ten; whole
    steps when ``integer``)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0]
    if hi <= lo:
        pad = abs(lo) * 0.05 or 0.5
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(count - 1, 1)
    if not math.isfinite(raw) or raw <= 0:  # a span past the float range, or below its resolution
        return [lo, hi] if lo < hi else [lo]
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    if integer:
        step = max(step, 1.0)
    start = math.floor(lo / step) * step
    ticks, value = [], start
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    if ticks[-1] < hi:
        ticks.append(round(value, 12))
    return ticks


def _label(value: float) -> str:
    return f"{value:.6g}"


def _text(
    x: float, y: float, text: str, *, anchor: str = "start", fill: str = "#111827", weight: str = "400", size: int = 11
) -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" fill="{fill}" font-weight="{weight}" '
        f'font-size="{size}">{escape(text)}</text>'
    )


def _xy(chart: XYChart) -> tuple[str, int]:
    xs = [x for s in chart.series for x, _ in s.points]
    ys = [y for s in chart.series for _, y in s.points]
    x_ticks = nice_ticks(min(xs), max(xs), integer=all(float(x).is_integer() for x in xs))
    y_ticks = nice_ticks(min(ys), max(ys))
    x0, x1, y0, y1 = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def sx(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0 or 1) * plot_w

    def sy(y: float) -> float:
        return TOP + plot_h - (y - y0) / (y1 - y0 or 1) * plot_h

    parts = [_grid(y_ticks, sy, x_ticks, sx)]
    parts.append(_text(LEFT + plot_w / 2, HEIGHT - 8, chart.x_label, anchor="middle"))
    parts.append(
        f'<text transform="translate(14 {TOP + plot_h / 2:.1f}) rotate(-90)" text-anchor="middle" '
        f'fill="#111827">{escape(chart.y_label)}</text>'
    )
    marks = 0
    for series in chart.series:
        svg, n = _series(series, sx, sy)
        parts.append(svg)
        marks += n
    parts.append(_legend(chart.series))
    return "".join(parts), marks


def _grid(y_ticks: list[float], sy: Scale, x_ticks: list[float], sx: Scale) -> str:
    parts = []
    for y in y_ticks:
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" stroke="#e5e7eb"/>')
        parts.append(_text(LEFT - 6, sy(y) + 4, _label(y), anchor="end", fill="#374151"))
    for x in x_ticks:
        parts.append(_text(sx(x), HEIGHT - BOTTOM + 16, _label(x), anchor="middle", fill="#374151"))
    parts.append(
        f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{HEIGHT - BOTTOM}" y2="{HEIGHT - BOTTOM}" stroke="#9ca3af"/>'
    )
    return "".join(parts)


def _series(series: Series, sx: Scale, sy: Scale) -> tuple[str, int]:
    colour = COLOURS[series.style]
    points = [(sx(x), sy(y)) for x, y in series.points]
    tips = [f"{series.label}: x={_label(x)}, y={_label(y)}" for x, y in series.points]
    if series.kind == "scatter":
        circles = "".join(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{colour}" fill-opacity="0.8">'
            f"<title>{escape(tip)}</title></circle>"
            for (x, y), tip in zip(points, tips, strict=True)
        )
        return f'<g class="series" data-style="{series.style}">{circles}</g>', len(points)
    if series.kind == "step":
        path = [f"M{points[0][0]:.1f},{points[0][1]:.1f}"]
        for (x, y), (_, prev_y) in zip(points[1:], points, strict=False):
            path.append(f"H{x:.1f}V{y:.1f}" if y != prev_y else f"H{x:.1f}")
    else:
        path = [f"{'M' if i == 0 else 'L'}{x:.1f},{y:.1f}" for i, (x, y) in enumerate(points)]
    width = "2" if series.kind == "step" else "1.5"
    svg = (
        f'<g class="series" data-style="{series.style}"><path d="{"".join(path)}" fill="none" stroke="{colour}" '
        f'stroke-width="{width}" stroke-opacity="0.85"><title>{escape(series.label)}</title></path>'
    )
    if series.kind == "line" and series.markers:
        svg += "".join(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2" fill="{colour}"><title>{escape(tip)}</title></circle>'
            for (x, y), tip in zip(points, tips, strict=True)
        )
    if series.end_marker:
        x, y = points[-1]
        svg += (
            f'<path d="M{x - 4:.1f},{y - 4:.1f}L{x + 4:.1f},{y + 4:.1f}M{x - 4:.1f},{y + 4:.1f}L{x + 4:.1f},'
            f'{y - 4:.1f}" stroke="{colour}" stroke-width="2"><title>{escape(series.label)} pruned here</title></path>'
        )
    return svg + "</g>", 1


def _legend(series: list[Series]) -> str:
    by_style = all(s.kind == "line" for s in series)  # one entry per state, not per trial
    entries: dict[str, str] = {}
    for s in series:
        if s.points:
            entries.setdefault(s.style if by_style else s.label, s.style)
    parts, x = [], float(WIDTH - RIGHT)
    for label, style in reversed(list(entries.items())):
        x -= 6.5 * len(label) + 24
        parts.append(f'<rect x="{x:.1f}" y="8" width="10" height="10" fill="{COLOURS[style]}"/>')
        parts.append(_text(x + 14, 17, label))
    return "".join(parts)


def _parallel(chart: ParallelChart) -> tuple[str, int]:
    axes = chart.axes
    plot_h = HEIGHT - TOP - BOTTOM - 8
    gap = (WIDTH - 2 * LEFT) / (len(axes) - 1)
    xs = [LEFT + i * gap for i in range(len(axes))]

    def sy(position: float) -> float:
        return TOP + 12 + plot_h - position * plot_h

    values = [v for _, v in chart.lines]
    lo, hi = min(values), max(values)
    parts = []
    for values_row, value in chart.lines:
        share = 0.5 if hi == lo else (value - lo) / (hi - lo)
        good = share if chart.goal == "maximize" else 1 - share
        colour = f"hsl({int(220 - 200 * good)}, 75%, 45%)"  # blue (worse) to red (better)
        points = " ".join(
            f"{x:.1f},{sy(axis.position(v)):.1f}" for x, axis, v in zip(xs, axes, values_row, strict=True)
        )
        tip = ", ".join(f"{axis.name}={v}" for axis, v in zip(axes, values_row, strict=True))
        parts.append(
            f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="1.5" stroke-opacity="0.7">'
            f"<title>{escape(tip)}</title></polyline>"
        )
    names = [axis.name + (" (log)" if axis.log else "") for axis in axes]
    for x, axis, name, (y, label) in zip(xs, axes, names, axis_labels(names, gap), strict=True):
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{sy(0):.1f}" y2="{sy(1):.1f}" stroke="#374151"/>')
        text = _text(x, y, label, anchor="middle", weight="600")
        parts.append(text if label == name else text.replace("</text>", f"<title>{escape(name)}</title></text>"))
        for position, tick_label in axis.ticks():
            tick = _text(x + 4, sy(position) + 4, tick_label, fill="#374151")
            parts.append(tick.replace("<text ", '<text paint-order="stroke" stroke="#fff" stroke-width="3" ', 1))
    return "".join(parts), len(chart.lines)


BOLD_CHAR_PX = 7.0
"""A generous width of one character of an 11 px bold label (system-ui), to keep labels apart."""


def axis_labels(names: list[str], gap: float) -> list[tuple[float, str]]:
    """Each parallel axis's label and baseline: on one row while every label fits between its axes; else
    on two staggered rows (a label then has two gaps to its same-row neighbours), each cut with "…" to
    what fits there and at the chart's edges (the full name goes in the label's ``<title>``)."""
    one_row = all(len(name) * BOLD_CHAR_PX <= gap - 8 for name in names)
    labels: list[tuple[float, str]] = []
    for i, name in enumerate(names):
        room = gap - 8 if one_row else 2 * gap - 8
        if i in {0, len(names) - 1}:
            room = min(room, 2 * LEFT - 8)  # centred on an end axis, LEFT from the chart's edge
        fits = max(int(room // BOLD_CHAR_PX), 2)
        label = name if len(name) <= fits else name[: fits - 1] + "…"
        y = HEIGHT - 10 if one_row or i % 2 else HEIGHT - 24
        labels.append((y, label))
    return labels


def _bars(chart: BarChart) -> tuple[str, int]:
    top = max(v for _, v in chart.bars) or 1.0
    row = min(28.0, (HEIGHT - TOP - BOTTOM) / len(chart.bars))
    label_w = 140
    plot_w = WIDTH - LEFT - RIGHT - label_w - 48  # room for the value after the longest bar
    parts = []
    for i, (name, value) in enumerate(chart.bars):
        y = TOP + 8 + i * row
        w = max(value / top * plot_w, 1.0)
        parts.append(_text(LEFT + label_w - 8, y + row * 0.6, name, anchor="end"))
        parts.append(
            f'<rect x="{LEFT + label_w}" y="{y:.1f}" width="{w:.1f}" height="{row * 0.7:.1f}" fill="#2563eb">'
            f"<title>{escape(name)}: {value:.4f}</title></rect>"
        )
        parts.append(_text(LEFT + label_w + w + 6, y + row * 0.6, f"{value:.3f}"))
    if chart.note:
        parts.append(_text(LEFT, HEIGHT - 10, chart.note, fill="#6b7280"))
    return "".join(parts), len(chart.bars)
