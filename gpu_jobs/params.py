"""The hyperparameters each model really has: names, types, valid ranges and defaults.

This table is the single source of truth shared by the training CLI (one flag per hyperparameter),
the experiment spec validation (a search space may only name these) and the AzureML sweep mapping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

ModelName = Literal["random_forest", "xgboost"]
MODELS: tuple[str, ...] = ("random_forest", "xgboost")
MAX_REPORT_EVERY = 10_000
"""``report_every`` (rounds or trees a step, :mod:`gpu_jobs.steps`) at most this: the largest ``num_boost_round``."""
Fidelity = Literal["rounds", "rows"]
"""What a step grows (:mod:`gpu_jobs.steps`): rounds or trees so far, or the share of the rows a whole model is
refit on."""
FIDELITIES: tuple[str, ...] = ("rounds", "rows")
MAX_FRACTION_LEVELS = 5
"""A model refit on data fractions reports at most this many steps (6, 12, 25, 50, 100 percent)."""


def percent_levels(first: int, factor: int) -> tuple[int, ...]:
    """``100 / factor**k`` percent, rounded down, for every ``k`` that keeps it at or above ``first``, at most
    :data:`MAX_FRACTION_LEVELS` of them, increasing, 100 last: ``(11, 33, 100)`` for 10 and 3. With ``factor``
    a rung policy's reduction factor and the first level its first rung, the level ``k`` is the first at or
    past rung ``k``'s step, ``first level * factor**k`` (rounding down keeps that): every level is a rung."""
    levels = [100]
    while len(levels) < MAX_FRACTION_LEVELS and 100 / factor ** len(levels) >= first:
        levels.append(100 // factor ** len(levels))
    return tuple(reversed(levels))


@dataclass(frozen=True)
class HyperParameter:
    """One tunable hyperparameter with its closed valid range ``[low, high]``."""

    name: str
    kind: Literal["int", "float"]
    default: float
    low: float
    high: float = math.inf
    low_inclusive: bool = True
    help: str = ""

    def check(self, value: float) -> float | int:
        """Return ``value`` coerced to this parameter's type, or raise ``ValueError`` naming the range."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{self.name} must be a number, got {value!r}")
        if self.kind == "int":
            if float(value) != int(value):
                raise ValueError(f"{self.name} must be an integer, got {value!r}")
            value = int(value)
        else:
            value = float(value)
        too_low = value < self.low if self.low_inclusive else value <= self.low
        if too_low or value > self.high or (isinstance(value, float) and math.isnan(value)):
            raise ValueError(f"{self.name}={value!r} is out of range: expected {self.describe_range()}")
        return value

    def describe_range(self) -> str:
        left = "[" if self.low_inclusive else "("
        right = "inf)" if math.isinf(self.high) else f"{self.high:g}]"
        return f"{self.kind} in {left}{self.low:g}, {right}"


def _p(
    name: str,
    kind: Literal["int", "float"],
    default: float,
    low: float,
    high: float = math.inf,
    low_inclusive: bool = True,
    help: str = "",
) -> HyperParameter:
    return HyperParameter(name, kind, default, low, high, low_inclusive, help)


HYPERPARAMETERS: dict[str, dict[str, HyperParameter]] = {
    "random_forest": {
        p.name: p
        for p in (
            _p("n_estimators", "int", 100, 1, 5000, help="number of trees"),
            _p("max_depth", "int", 16, 1, 64, help="maximum tree depth"),
            _p(
                "max_features",
                "float",
                1.0,
                0.0,
                1.0,
                low_inclusive=False,
                help="fraction of features considered per split",
            ),
            _p("n_bins", "int", 32, 2, 1024, help="histogram bins per feature (cuML only)"),
            _p("min_samples_leaf", "int", 1, 1, 1_000_000, help="minimum rows per leaf"),
        )
    },
    "xgboost": {
        p.name: p
        for p in (
            _p("learning_rate", "float", 0.3, 0.0, 1.0, low_inclusive=False, help="shrinkage (eta)"),
            _p("max_depth", "int", 6, 0, 64, help="maximum tree depth (0 = unlimited, hist only)"),
            _p("num_boost_round", "int", 100, 1, 10_000, help="boosting rounds"),
            _p("subsample", "float", 1.0, 0.0, 1.0, low_inclusive=False, help="row subsample ratio"),
            _p(
                "colsample_bytree",
                "float",
                1.0,
                0.0,
                1.0,
                low_inclusive=False,
                help="column subsample ratio per tree",
            ),
            _p("gamma", "float", 0.0, 0.0, help="minimum loss reduction to split"),
            _p("lambda", "float", 1.0, 0.0, help="L2 regularisation"),
            _p("alpha", "float", 0.0, 0.0, help="L1 regularisation"),
            _p("min_child_weight", "float", 1.0, 0.0, help="minimum hessian per child"),
            _p("max_bin", "int", 256, 2, 1024, help="histogram bins per feature"),
            _p(
                "early_stopping_rounds",
                "int",
                0,
                0,
                10_000,
                help="stop once log loss on a held-out tenth of the training rows has not improved for this "
                "many rounds, keeping the best round (0 = off)",
            ),
        )
    },
}


def validate_params(model: str, params: dict[str, float]) -> dict[str, float | int]:
    """Check hyperparameters against ``model``'s table; return them coerced, defaults filled in.

    Raises ``ValueError`` naming the first unknown or out-of-range parameter.
    """
    if model not in HYPERPARAMETERS:
        raise ValueError(f"unknown model {model!r}: expected one of {', '.join(MODELS)}")
    table = HYPERPARAMETERS[model]
    unknown = sorted(set(params) - set(table))
    if unknown:
        raise ValueError(f"{model} has no hyperparameter {unknown[0]!r}: expected one of {', '.join(table)}")
    checked = {name: hp.check(hp.default) for name, hp in table.items()}
    checked.update({name: table[name].check(value) for name, value in params.items()})
    return checked
