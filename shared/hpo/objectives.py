"""Several objectives and constraints on the driver: a finished trial's objective values and constraint
values, read from its metrics (the task's scores and what it measured of its model; ``shared/spec/objectives.py``).

A COMPLETED trial lacking an objective or a constrained metric (or holding a non-finite one) is recorded
FAILED saying which, as a non-finite primary metric already is; its feasibility is stored on the record
(``TrialRecord.feasible``) for the best-model rule and the Pareto front (``shared/pareto.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from shared.spec import ExperimentSpec


def metric_value(metrics: Mapping[str, Any], name: str) -> float | str:
    """``metrics[name]`` as a finite float, or why it is not one."""
    value = metrics.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"the trial reported no {name}"
    if not math.isfinite(value):
        return f"{name} is not finite"
    return float(value)


def objective_values(
    spec: ExperimentSpec, metrics: Mapping[str, Any], primary: float | None = None
) -> list[float] | str:
    """Every objective's value, the primary first (``primary`` if given: a stored trial's value), or why one
    is missing."""
    values: list[float] = []
    for name in spec.objective.metrics:
        given = primary if name == spec.objective.primary_metric and primary is not None else None
        value = metric_value(metrics, name) if given is None else metric_value({name: given}, name)
        if isinstance(value, str):
            return value
        values.append(value)
    return values


def constraint_values(spec: ExperimentSpec, metrics: Mapping[str, Any]) -> list[float] | str:
    """Optuna's constraint values (feasible when every one is <= 0), or why a metric is missing."""
    found: list[float] = []
    for constraint in spec.objective.constraints:
        value = metric_value(metrics, constraint.metric)
        if isinstance(value, str):
            return value
        found += constraint.violations(value)
    return found


def signed_others(spec: ExperimentSpec, values: list[float] | None) -> list[float]:
    """``TrialRecord.objective_key``: the objectives after the primary, each signed so lower is better."""
    if not values:
        return []
    return [
        (-v if goal == "maximize" else v) for v, goal in zip(values[1:], spec.objective.directions[1:], strict=True)
    ]
