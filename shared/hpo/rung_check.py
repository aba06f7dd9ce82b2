"""Whether a rung policy's first rung comes where the metric already ranks the trials as their end does.

Successive halving and Hyperband stop a trial at a rung by its rank among the trials that reached it; that
saves time only where the rank there predicts the rank at the end. It need not. On the flights example
(accuracy, XGBoost, 160 rounds reported every 10) a slow learning rate still predicts the majority class
after 10 rounds and a fast one overfits later, so the ranks at round 10 are reversed (Spearman -0.5 over a
random search's trials) and stay below zero to about round 60: rungs there stop the trials that end up best.
On scikit-learn's digits the rank at round 10 already agrees (+0.8). No default fits both, so ``plan`` measures
it on the completed trials of the newest finished run of the same data, model and metric
(:func:`rung_advice`) and says where the rank starts to agree, beside the policy's first rung.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from shared.cost.measured import finished_runs
from shared.records import TrialRecord, TrialState

if TYPE_CHECKING:
    from shared.ports import Store
    from shared.spec import ExperimentSpec

AGREEMENT = 0.5
"""The Spearman correlation from which a step's ranks count as agreeing with the end's."""
MIN_TRIALS = 6
"""Fewer completed trials than this say nothing about ranks."""
RUNS_SEARCHED = 50
"""The newest experiments looked through for a finished run of the same workload and metric."""


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (ties share their mean rank); NaN when either side is constant."""
    ranks = [_ranks(np.asarray(x, dtype=float)) for x in (a, b)]
    if any(np.ptp(r) == 0 for r in ranks):
        return math.nan
    return float(np.corrcoef(ranks[0], ranks[1])[0, 1])


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values), dtype=float)
    for value in np.unique(values):  # ties: their mean rank
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def rank_agreement(trials: Sequence[TrialRecord]) -> dict[int, float]:
    """For each step every completed trial reported (the last excepted), the Spearman correlation of the
    trials' values there with their final values; empty with fewer than :data:`MIN_TRIALS` trials."""
    done = [t for t in trials if t.state is TrialState.COMPLETED and t.value is not None and t.intermediate]
    if len(done) < MIN_TRIALS:
        return {}
    steps = sorted(set.intersection(*(set(t.intermediate) for t in done)))[:-1]
    finals = [float(t.value or 0.0) for t in done]
    return {step: spearman([t.intermediate[step] for t in done], finals) for step in steps}


def agreeing_from(agreement: dict[int, float], floor: float = AGREEMENT) -> int | None:
    """The first step from which every later step's ranks agree with the end's (at least ``floor``)."""
    first = None
    for step in sorted(agreement, reverse=True):
        if not agreement[step] >= floor:  # NaN counts as no agreement
            break
        first = step
    return first


def same_unit(unit: str | None, spec: ExperimentSpec) -> bool:
    """Whether a trial's steps in ``unit`` count what the spec's steps count: folds, percent of the rows
    (``trial.fidelity: rows``), or rounds or trees (a cuML forest's percent among them)."""
    if spec.trial.report_every is None:
        return unit == "fold"
    if spec.trial.fidelity == "rows":
        return unit == "percent"
    return unit != "fold"


def rung_advice(spec: ExperimentSpec, store: Store) -> str | None:
    """For ``plan``: where the newest finished run of the spec's workload (same data, model, folds, compute,
    primary metric and step unit) ranked its trials as at the end, against the rung policy's first rung.
    None without a rung policy or such a run."""
    from shared.spec.search_table import pruner_entry

    policy = spec.early_termination
    if policy is None or policy.type not in ("successive_halving", "hyperband"):
        return None
    first = pruner_entry(policy).first_stop(policy, spec)
    for record in finished_runs(store, spec, RUNS_SEARCHED):
        if record.spec is None or record.spec.objective.primary_metric != spec.objective.primary_metric:
            continue
        trials = [t for t in store.list_trials(record.id) if same_unit(t.step_unit, spec)]
        agreement = rank_agreement(trials)
        if not agreement:
            continue
        start = agreeing_from(agreement)
        shown = ", ".join(f"{step}: {rho:+.2f}" for step, rho in list(agreement.items())[:8])
        where = "at no step before the last" if start is None else f"from step {start}"
        fix = "set min_resource at or after that step"
        if spec.trial.fidelity == "rounds" and spec.trial.report_every is not None:
            fix += ", or trial.fidelity: rows (each step trains to the end on a share of the rows)"
        verdict = (
            f"it would stop trials by a rank that does not hold at the end: {fix}"
            if start is None or (first is not None and first < start)
            else "it comes after that"
        )
        return (
            f"rungs: {record.id}'s {sum(t.state is TrialState.COMPLETED for t in trials)} completed trials ranked "
            f"as at their end {where} (Spearman {shown}); {policy.type}'s first rung is step {first}: {verdict}"
        )
    return None
