"""Stopping rules for the whole run, beside ``max_total_trials``, ``timeout`` and ``max_cost``.

``limits.target_value`` (a trial reached it), ``limits.no_improvement_trials`` (that many trials in a row
ended without a better best) and ``limits.terminator`` (Optuna's terminator: the regret bound a Gaussian
process estimates for the rest of the search is below the best trial's cross-validation noise, computed
from its fold scores). Each is a soft stop: no trial starts after it, running trials finish, and the run
completes with the rule named (``ExperimentOutcome.stopped_by`` and its reason, which the experiment's
history records). Optuna marks its terminator module deprecated since 4.9 (removal in 6.0).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import optuna

from shared.records import TrialRecord, TrialState
from shared.spec import ExperimentSpec

CV_SCORES_KEY = "terminator:cv_scores"
"""The system attribute Optuna's ``CrossValidationErrorEvaluator`` reads a trial's fold scores from."""
NEEDS = ("torch",)
"""What the terminator's Gaussian process needs where the driver runs."""


@dataclass(frozen=True)
class Stop:
    """Which rule stopped the run (``stopped_by``: the spec field) and why, in words."""

    stopped_by: str
    reason: str


def fold_scores(record: TrialRecord, metric: str) -> list[float] | None:
    """A completed trial's per-fold scores of ``metric`` (what the terminator's noise estimate reads)."""
    by_metric = record.metrics.get("fold_scores")
    scores = by_metric.get(metric) if isinstance(by_metric, dict) else None
    if not isinstance(scores, list) or len(scores) < 2 or not all(isinstance(v, int | float) for v in scores):
        return None
    values = [float(v) for v in scores]
    return values if all(math.isfinite(v) for v in values) else None


class StopRules:
    """The spec's stopping rules, checked after trials end (:meth:`check`)."""

    def __init__(self, spec: ExperimentSpec) -> None:
        limits = spec.limits
        self.metric = spec.objective.primary_metric
        self.maximize = spec.objective.goal == "maximize"
        self.target = limits.target_value
        self.patience = limits.no_improvement_trials
        self._terminator: Any = None
        self._checked_at = -1
        if limits.terminator is not None:
            from optuna.terminator import CrossValidationErrorEvaluator, RegretBoundEvaluator, Terminator

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # experimental, and deprecated since Optuna 4.9
                self._terminator = Terminator(
                    improvement_evaluator=RegretBoundEvaluator(),
                    error_evaluator=CrossValidationErrorEvaluator(),
                    min_n_trials=limits.terminator.min_trials,
                )

    def _better(self, a: float, b: float) -> bool:
        return a > b if self.maximize else a < b

    def check(self, records: Iterable[TrialRecord], study: optuna.Study) -> Stop | None:
        """The rule that stops the run now, or None. ``records``: every trial so far."""
        if self.target is None and self.patience is None and self._terminator is None:
            return None  # no rule: the records are not even sorted (the driver asks after every trial)
        ended = sorted(
            (r for r in records if r.state is not TrialState.RUNNING and r.ended_at is not None),
            key=lambda r: (r.ended_at, r.number),
        )
        best: TrialRecord | None = None
        since = 0  # trials ended since the best last improved
        for record in ended:
            done = record.state is TrialState.COMPLETED and record.value is not None
            if done and (best is None or self._better(record.value, best.value)):  # type: ignore[arg-type]
                best, since = record, 0
            else:
                since += 1
        if best is not None and self.target is not None and not self._better(self.target, best.value):  # type: ignore[arg-type]
            sign = ">=" if self.maximize else "<="
            why = f"target reached: trial {best.number}'s {self.metric} {best.value:.6g} {sign} {self.target:g}"
            return Stop("target_value", why)
        if best is not None and self.patience is not None and since >= self.patience:
            why = f"no improvement in {since} trials since trial {best.number} ({self.metric} {best.value:.6g})"
            return Stop("no_improvement_trials", why)
        return self._terminated(study)

    def _terminated(self, study: optuna.Study) -> Stop | None:
        if self._terminator is None:
            return None
        complete = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
        if complete == self._checked_at:  # the Gaussian process is refit only when a trial completed
            return None
        self._checked_at = complete
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if not self._terminator.should_terminate(study):
                return None
        return Stop(
            "terminator",
            f"the terminator stopped after {complete} completed trials: the estimated regret is below the best "
            "trial's cross-validation noise",
        )


def missing_modules(spec: ExperimentSpec) -> str | None:
    """Why ``limits.terminator`` cannot run in this Python, or None."""
    import importlib.util

    if spec.limits.terminator is None:
        return None
    missing = [name for name in NEEDS if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    return (
        f"limits.terminator needs the Python package(s) {', '.join(missing)} where the driver runs (pip install "
        "them into the compute's image), or remove it"
    )
