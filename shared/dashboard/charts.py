"""The dashboard's charts as plain data, built from an experiment's records (no plotting library here).

One chart model, several renderers: :mod:`shared.dashboard.svg` draws it as inline SVG for the pages
and the self-contained HTML artifacts (pure Python, so the Function App needs nothing more), and
:mod:`shared.dashboard.png` draws it with matplotlib where that is installed (the compute, a dev box).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from shared.records import ExperimentRecord, TrialRecord, TrialState

CHART_NAMES = ("history", "intermediate", "parallel", "importances")
"""The charts of an experiment, in page order; also the stems of the files under ``plots/``. An experiment
with several objectives (``objective.also``) has one more, :data:`PARETO` (:func:`pareto`)."""
PARETO = "pareto"

MARKER_LIMIT = 100
"""Above this many trials the per-fold chart draws lines without a marker per point."""

Style = Literal["completed", "pruned", "failed", "running", "best"]


@dataclass(frozen=True)
class Series:
    """Points of one kind: ``scatter`` (markers), ``line`` (joined) or ``step`` (best so far)."""

    label: str
    points: list[tuple[float, float]]
    kind: Literal["scatter", "line", "step"]
    style: Style
    end_marker: bool = False
    """Mark the last point (where a pruned trial stopped)."""
    markers: bool = True
    """Draw (and label) each point of a line; off past :data:`MARKER_LIMIT` lines, to keep pages small."""


DRAWABLE = 1e300
"""Largest magnitude drawn: past it, spans between values overflow to infinity (the axes' arithmetic)."""


def drawable(value: Any) -> bool:
    """Whether ``value`` is a number a chart can place (finite and within :data:`DRAWABLE`)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and abs(float(value)) <= DRAWABLE


@dataclass(frozen=True)
class XYChart:
    name: str
    title: str
    x_label: str
    y_label: str
    series: list[Series]
    empty: str = "no values yet"
    left_out: int = 0
    """Values not drawn (not finite, or beyond :data:`DRAWABLE`): the chart says how many."""

    @property
    def has_data(self) -> bool:
        return any(s.points for s in self.series)


@dataclass(frozen=True)
class Axis:
    """One vertical axis of a parallel-coordinates chart: numeric (``lo``..``hi``) or categorical."""

    name: str
    lo: float = 0.0
    hi: float = 1.0
    categories: list[str] = field(default_factory=list)
    log: bool = False

    def position(self, value: Any) -> float:
        """Where ``value`` sits on the axis, 0 (bottom) to 1 (top)."""
        if self.categories:
            index = self.categories.index(str(value))
            return 0.5 if len(self.categories) == 1 else index / (len(self.categories) - 1)
        lo, hi, x = self.lo, self.hi, float(value)
        if self.log:
            lo, hi, x = math.log10(lo), math.log10(hi), math.log10(x)
        return 0.5 if hi == lo else (x - lo) / (hi - lo)

    def ticks(self) -> list[tuple[float, str]]:
        if self.categories:
            return [(self.position(c), c) for c in self.categories]
        return [(0.0, _short(self.lo)), (1.0, _short(self.hi))]


@dataclass(frozen=True)
class ParallelChart:
    name: str
    title: str
    axes: list[Axis]
    lines: list[tuple[list[Any], float]]
    """Per completed trial: its value on each axis (the objective first) and its objective value."""
    goal: str
    empty: str = "no completed trial yet"
    left_out: int = 0
    """Completed trials not drawn (a value or parameter a chart cannot place)."""

    @property
    def has_data(self) -> bool:
        return bool(self.lines) and len(self.axes) > 1


@dataclass(frozen=True)
class BarChart:
    name: str
    title: str
    bars: list[tuple[str, float]]
    note: str = ""
    empty: str = "no importances yet"

    @property
    def has_data(self) -> bool:
        return bool(self.bars)


Chart = XYChart | ParallelChart | BarChart


def _short(value: float) -> str:
    return f"{value:.4g}"


def no_best(ended: bool) -> str:
    """What stands in for the best trial when none completed: "yet" only while the experiment runs."""
    return "no completed trial" if ended else "no completed trial yet"


def objective(record: ExperimentRecord) -> tuple[str, str]:
    """``(primary_metric, goal)`` of an experiment."""
    return record.objective


def history(trials: list[TrialRecord], metric: str, goal: str, *, ended: bool = False) -> XYChart:
    """Every completed trial's value and the best so far (Optuna's optimization history)."""
    done = sorted((t for t in trials if _scored(t)), key=_number)
    points = [(float(t.number), float(t.value)) for t in done if t.value is not None and drawable(t.value)]
    best: list[tuple[float, float]] = []
    for x, y in points:
        if not best or (y > best[-1][1] if goal == "maximize" else y < best[-1][1]):
            best.append((x, y))
        else:
            best.append((x, best[-1][1]))
    return XYChart(
        "history",
        "Optimization history",
        "trial",
        metric,
        [Series(metric, points, "scatter", "completed"), Series("best so far", best, "step", "best")],
        empty=no_best(ended),
        left_out=len(done) - len(points),
    )


def intermediate(trials: list[TrialRecord], metric: str) -> XYChart:
    """Each trial's running cross-validated mean per fold; pruned trials end where they stopped."""
    series = []
    left_out = 0
    markers = len(trials) <= MARKER_LIMIT
    for trial in sorted(trials, key=_number):
        points = sorted((float(step), float(v)) for step, v in trial.intermediate.items() if drawable(v))
        left_out += len(trial.intermediate) - len(points)
        if points:
            ended_badly = trial.state in {TrialState.TIMED_OUT, TrialState.CANCELLED}
            style: Style = "failed" if ended_badly else trial.state.value.lower()  # type: ignore[assignment]
            series.append(
                Series(
                    f"trial {trial.number}",
                    points,
                    "line",
                    style,
                    end_marker=trial.state is TrialState.PRUNED,
                    markers=markers,
                )
            )
    units = {t.step_unit for t in trials if t.intermediate}
    unit = units.pop() if len(units) == 1 else "fold"  # trial.report_every: rounds, trees or percent of rows
    title = "Intermediate values per fold" if unit == "fold" else f"Intermediate values per {unit} (all folds)"
    return XYChart("intermediate", title, unit, f"{metric} (running mean)", series, left_out=left_out)


def parallel(
    trials: list[TrialRecord], names: list[str], metric: str, goal: str, *, ended: bool = False
) -> ParallelChart:
    """Completed trials across the objective and each searched hyperparameter."""
    scored = [t for t in sorted(trials, key=_number) if _scored(t)]
    done = [t for t in scored if drawable(t.value) and not any(_too_big(v) for v in t.params.values())]
    names = [n for n in names if any(n in t.params for t in done)]
    done = [t for t in done if all(n in t.params for n in names)]
    axes = [_axis(metric, [t.value for t in done])] + [_axis(n, [t.params[n] for t in done]) for n in names]
    lines = [([t.value, *(t.params[n] for n in names)], float(t.value or 0.0)) for t in done]
    left_out = len(scored) - len(done)
    return ParallelChart("parallel", "Parallel coordinates", axes, lines, goal, no_best(ended), left_out)


def _too_big(value: Any) -> bool:
    """A number no axis can place (a string or bool is a category and always can)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and not drawable(value)


def _scored(trial: TrialRecord) -> bool:
    return trial.state is TrialState.COMPLETED and trial.value is not None and math.isfinite(trial.value)


def _axis(name: str, values: list[Any]) -> Axis:
    numeric = all(drawable(v) for v in values)
    if values and numeric:
        numbers = [float(v) for v in values]
        lo, hi = min(numbers), max(numbers)
        log = lo > 0 and hi / lo >= 100
        return Axis(name, lo, hi, log=log)
    categories = sorted({str(v) for v in values})
    return Axis(name, categories=categories)


def importances(document: dict[str, Any] | None) -> BarChart:
    """Bars from the ``plots/importances.json`` document the compute wrote (see ``importance.py``)."""
    if not document:
        return BarChart("importances", "Hyperparameter importances", [], empty="computed on the compute as trials end")
    values = document.get("importances") or {}
    bars = sorted(((str(k), float(v)) for k, v in values.items() if drawable(v)), key=lambda kv: -kv[1])
    note = f"{document.get('evaluator', '')} over {document.get('trials', '?')} completed trials"
    return BarChart("importances", "Hyperparameter importances", bars, note, empty=document.get("error") or "n/a")


def multi_objective(record: ExperimentRecord) -> bool:
    return record.spec is not None and record.spec.objective.multi


def pareto(record: ExperimentRecord, trials: list[TrialRecord]) -> XYChart:
    """The first two objectives of every completed trial: the Pareto front (``shared/pareto.py``), the
    trials it dominates and the infeasible ones (an experiment of several objectives only)."""
    from shared.pareto import objective_point, pareto_front

    spec = record.spec
    assert spec is not None and spec.objective.multi, "an experiment of several objectives"

    x_name, y_name = spec.objective.metrics[:2]
    front = {t.number for t, _ in pareto_front(spec, trials)}
    groups: dict[str, list[tuple[float, float]]] = {"front": [], "dominated": [], "infeasible": []}
    left_out = 0
    for trial in sorted(trials, key=_number):
        point = objective_point(spec, trial) if trial.state is TrialState.COMPLETED else None
        if point is None or not (drawable(point[0]) and drawable(point[1])):
            left_out += trial.state is TrialState.COMPLETED
            continue
        kind = "front" if trial.number in front else "infeasible" if trial.feasible is False else "dominated"
        groups[kind].append((point[0], point[1]))
    series = [
        Series("Pareto front", sorted(groups["front"]), "line", "best"),
        Series("dominated", groups["dominated"], "scatter", "completed"),
        Series("infeasible (a constraint broken)", groups["infeasible"], "scatter", "failed"),
    ]
    return XYChart(PARETO, "Pareto front", x_name, y_name, [s for s in series if s.points], left_out=left_out)


def build_charts(
    record: ExperimentRecord, trials: list[TrialRecord], importance_doc: dict[str, Any] | None
) -> list[Chart]:
    """The charts of an experiment, in :data:`CHART_NAMES` order, then the Pareto front's with several objectives."""
    metric, goal = objective(record)
    names = record.searched
    return [
        history(trials, metric, goal, ended=record.status.terminal),
        intermediate(trials, metric),
        parallel(trials, names, metric, goal, ended=record.status.terminal),
        importances(importance_doc),
        *([pareto(record, trials)] if multi_objective(record) else []),
    ]


def fold_values(trial: TrialRecord, metric: str) -> list[float]:
    """The primary metric of each fold: recorded scores when the trial finished, else recovered from
    the running means it reported (fold k = k * mean_k - (k - 1) * mean_(k-1))."""
    by_metric = trial.metrics.get("fold_scores")
    scores = by_metric.get(metric) if isinstance(by_metric, dict) else None
    if isinstance(scores, list) and scores:
        return [float(s) for s in scores]
    values, previous = [], 0.0
    for k, (_, mean) in enumerate(sorted(trial.intermediate.items()), start=1):
        values.append(k * mean - (k - 1) * previous)
        previous = mean
    return values


def _number(trial: TrialRecord) -> int:
    return trial.number
