"""Several objectives and constraints (``objective.also``, ``objective.constraints``).

``objective.primary_metric`` stays the first objective and the one that names "the best model": the best
*feasible* trial by it, which is always on the Pareto front (``shared/pareto.py``). ``also`` adds up to
:data:`MAX_OBJECTIVES` - 1 more metrics: any of the task's, or what the trial measures of its model
(``gpu_jobs.metrics.MEASURED_METRICS``: ``model_size_mb``, ``predict_ms_per_1000_rows``). A constraint
bounds a metric (``max`` and/or ``min``); a trial that breaks one is *infeasible*: kept, charted and listed,
never the best nor on the front. Optuna sees constraints through ``constraints_func`` (value - max and
min - value, feasible when <= 0), which TPE, NSGA-II/III and GP use to steer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, model_validator

from gpu_jobs.metrics import MEASURED_METRICS, METRIC_ALIASES, METRICS
from shared.spec.errors import SpecModel, echo, fail

if TYPE_CHECKING:
    from shared.spec import ExperimentSpec

MAX_OBJECTIVES = 4
MAX_CONSTRAINTS = 8
OBJECTIVE_METRICS: dict[str, str] = {**METRICS, **MEASURED_METRICS}
"""Every metric an objective or constraint may name, with its natural direction."""


def _metric_name(value: Any) -> Any:
    if isinstance(value, str):
        value = value.lower()
        value = METRIC_ALIASES.get(value, value)
    return value


def check_metric(metric: str) -> str:
    if metric not in OBJECTIVE_METRICS:
        raise ValueError(
            f"unknown metric {echo(metric)}: expected a task's metric ({', '.join(METRICS)}) or a measured one "
            f"({', '.join(MEASURED_METRICS)})"
        )
    return metric


MetricName = Annotated[str, BeforeValidator(_metric_name), AfterValidator(check_metric)]
"""A metric an objective or constraint names: case and aliases folded (``RMSE``, ``auc``), then one of
:data:`OBJECTIVE_METRICS`; an error sits at the field that names it (``objective.also[0].metric``)."""


class ObjectiveTerm(SpecModel):
    """One more objective: a metric and its goal (its natural direction when left out)."""

    metric: MetricName
    goal: Literal["maximize", "minimize"] | None = None

    @model_validator(mode="after")
    def _goal(self) -> ObjectiveTerm:
        natural = OBJECTIVE_METRICS[self.metric]
        if self.goal is None:
            self.goal = natural  # type: ignore[assignment]
        elif self.goal != natural:
            fail([(("goal",), f"{self.metric} must be {natural}d")], "ObjectiveTerm")
        return self


class Constraint(SpecModel):
    """A bound on a metric: a trial with ``value > max`` or ``value < min`` is infeasible."""

    metric: MetricName
    max: float | None = None
    min: float | None = None

    @model_validator(mode="after")
    def _bounds(self) -> Constraint:
        if self.max is None and self.min is None:
            fail([(("max",), "a constraint needs max, min or both")], "Constraint")
        if self.max is not None and self.min is not None and self.min > self.max:
            fail(
                [(("min",), f"min ({self.min:g}) exceeds max ({self.max:g}): no trial could be feasible")], "Constraint"
            )
        return self

    def violations(self, value: float) -> list[float]:
        """Optuna's constraint values for ``value``: ``value - max`` and ``min - value`` (feasible <= 0)."""
        return [v for v in (value - self.max if self.max is not None else None,
                            self.min - value if self.min is not None else None) if v is not None]  # fmt: skip


def objectives_problems(spec: ExperimentSpec, task: str | None) -> list[tuple[tuple[Any, ...], str]]:
    """The rules across sections: metrics of the task, no early termination with several objectives (Optuna
    prunes single-objective studies only), and a sampler that optimizes several (the table says which)."""
    from gpu_jobs.metrics import metric_mismatch
    from shared.spec.search_table import SAMPLERS

    objective = spec.objective
    named: list[tuple[tuple[Any, ...], str]] = [
        (("objective", "also", i, "metric"), term.metric) for i, term in enumerate(objective.also)
    ]
    named += [(("objective", "constraints", i, "metric"), c.metric) for i, c in enumerate(objective.constraints)]
    problems: list[tuple[tuple[Any, ...], str]] = []
    for loc, metric in named:
        mismatch = None if task is None or metric in MEASURED_METRICS else metric_mismatch(metric, task)  # type: ignore[arg-type]
        if mismatch is not None:
            problems.append((loc, mismatch))
    if objective.multi and spec.early_termination is not None:
        problems.append(
            (("early_termination",), "several objectives (objective.also) cannot be pruned: Optuna prunes "
             "single-objective studies only; remove early_termination or objective.also")
        )  # fmt: skip
    sampler = SAMPLERS[spec.sampling_algorithm.type]
    if objective.multi and not sampler.multi_objective:
        able = ", ".join(t for t, e in SAMPLERS.items() if e.multi_objective)
        problems.append(
            (("sampling_algorithm", "type"), f"{sampler.type} optimizes one objective; objective.also needs {able}")
        )
    return problems
