"""PNG files of the chart models with matplotlib (Agg, its bundled fonts): for the compute and dev boxes.

matplotlib is in the dev requirements and the GPU image, never in the Function App's: this module is
imported only by :func:`shared.dashboard.artifacts.write_plots` when matplotlib can be imported.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from shared.dashboard.charts import BarChart, Chart, ParallelChart, XYChart
from shared.dashboard.svg import COLOURS


def render_png(chart: Chart, dpi: int = 100) -> bytes:
    """The chart as PNG bytes (6.4 x 3.2 inches)."""
    figure, ax = plt.subplots(figsize=(6.4, 3.2), dpi=dpi)
    try:
        ax.set_title(chart.title, loc="left", fontsize=11)
        if not chart.has_data:
            ax.text(0.5, 0.5, chart.empty, ha="center", va="center", color="#6b7280", transform=ax.transAxes)
            ax.set_axis_off()
        elif isinstance(chart, XYChart):
            _xy(ax, chart)
        elif isinstance(chart, ParallelChart):
            _parallel(ax, chart)
        else:
            _bars(ax, chart)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        return buffer.getvalue()
    finally:
        plt.close(figure)


def _xy(ax: Axes, chart: XYChart) -> None:
    labelled: set[str] = set()
    by_style = all(s.kind == "line" for s in chart.series)
    for s in chart.series:
        if not s.points:
            continue
        xs, ys = zip(*s.points, strict=True)
        name: str | None = s.style if by_style else s.label
        label = None if name in labelled else name
        labelled.add(label or "")
        colour = COLOURS[s.style]
        if s.kind == "scatter":
            ax.scatter(xs, ys, s=14, color=colour, label=label)
        elif s.kind == "step":
            ax.step(xs, ys, where="post", color=colour, label=label)
        else:
            ax.plot(xs, ys, color=colour, marker="." if s.markers else None, linewidth=1, alpha=0.85, label=label)
            if s.end_marker:
                ax.scatter(xs[-1:], ys[-1:], marker="x", color=colour, s=30)
    ax.set_xlabel(chart.x_label)
    ax.set_ylabel(chart.y_label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")


def _parallel(ax: Axes, chart: ParallelChart) -> None:
    cmap = plt.get_cmap("coolwarm")
    values = [v for _, v in chart.lines]
    lo, hi = min(values), max(values)
    for row, value in chart.lines:
        share = 0.5 if hi == lo else (value - lo) / (hi - lo)
        good = share if chart.goal == "maximize" else 1 - share
        ys = [axis.position(v) for axis, v in zip(chart.axes, row, strict=True)]
        ax.plot(range(len(chart.axes)), ys, color=cmap(good), alpha=0.7, linewidth=1.2)
    for i, axis in enumerate(chart.axes):
        ax.axvline(i, color="#374151", linewidth=1)
        for position, label in axis.ticks():
            ax.text(i + 0.03, position, label, fontsize=7, va="center")
    ax.set_xticks(range(len(chart.axes)), [a.name + (" (log)" if a.log else "") for a in chart.axes], fontsize=8)
    ax.set_yticks([])
    ax.set_ylim(-0.05, 1.05)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)


def _bars(ax: Axes, chart: BarChart) -> None:
    names = [n for n, _ in chart.bars][::-1]
    values = [v for _, v in chart.bars][::-1]
    ax.barh(names, values, color=COLOURS["completed"])
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:.3f}", va="center", fontsize=8)
    ax.set_xlabel(chart.note, fontsize=8)
