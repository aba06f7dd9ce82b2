"""The ``early_termination`` section: one model per policy, chosen by ``type``.

AzureML's three (``bandit``, ``median_stopping``, ``truncation_selection``) keep AzureML's fields and
meaning. The others are Optuna's pruners with Optuna's parameter names: ``successive_halving`` (ASHA),
``hyperband``, ``wilcoxon`` (a paired test over the folds), and the wrappers ``patient`` and ``threshold``,
which take another policy as ``wrapped``. Every step count is in the trial's *steps* (what a trial reports
on: :func:`trial_steps`). Which backend runs which policy, how it is built and what it saves is the
table's business (:mod:`shared.spec.search_table`); these models hold only each policy's own rules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from shared.spec.errors import SpecModel

if TYPE_CHECKING:
    from shared.spec import ExperimentSpec

    WrappedPolicy = Any  # at run time: the table's union of non-wrapper policies (search_table rebuilds)


def trial_steps(spec: ExperimentSpec) -> int:
    """The last step a trial reports (the running mean of the primary metric): ``cv_folds``, one per fold;
    with ``trial.report_every`` its rounds (XGBoost) or trees (forest; ``gpu_jobs/steps.py``): fixed in
    ``trial.params``, the largest a searched ``choice`` offers, else the hyperparameter's default. (A cuML
    forest reports percent of the rows instead, 100 last; the spec cannot know the engine.) With
    ``trial.fidelity: rows``, 100 (percent of the rows)."""
    if spec.trial.report_every is None:
        return spec.trial.cv_folds
    if spec.trial.fidelity == "rows":
        return 100
    from gpu_jobs.params import HYPERPARAMETERS

    name = "num_boost_round" if spec.trial.model == "xgboost" else "n_estimators"
    searched = getattr(spec.search_space.get(name), "values", None)
    if name in spec.trial.params:
        return int(spec.trial.params[name])
    if searched:
        return int(max(searched))
    return int(HYPERPARAMETERS[spec.trial.model][name].default)


def first_reported_step(spec: ExperimentSpec) -> int:
    """The first step a trial reports: ``trial.report_every`` rounds or trees, else fold 1; with
    ``trial.fidelity: rows`` the smallest of :func:`row_percents`."""
    if spec.trial.fidelity == "rows" and spec.trial.report_every is not None:
        return row_percents(spec)[0]
    return spec.trial.report_every or 1


def row_factor(spec: ExperimentSpec) -> int:
    """How many times the rows each step of ``trial.fidelity: rows`` refits on: a rung policy's reduction
    factor (a wrapper's wrapped one too), so that every step is a rung; else 2."""
    policy = spec.early_termination
    while policy is not None:
        if isinstance(policy, SuccessiveHalvingPolicy | HyperbandPolicy):
            return policy.reduction_factor
        policy = wrapped_of(policy)
    return 2


def row_percents(spec: ExperimentSpec) -> tuple[int, ...]:
    """The percents of the rows a trial of ``trial.fidelity: rows`` refits on (``gpu_jobs.params.percent_levels``
    from ``report_every`` and :func:`row_factor`): ``(11, 33, 100)`` for 10 and successive halving's 3."""
    from gpu_jobs.params import percent_levels

    return percent_levels(spec.trial.report_every or 100, row_factor(spec))


def first_rung(policy: SuccessiveHalvingPolicy | HyperbandPolicy, spec: ExperimentSpec) -> int:
    """A rung policy's ``min_resource``, by default the first step a trial reports. A rung below that step
    is decided there anyway, and several such rungs are decided at once on the same value: Optuna's default
    of 1 with ``report_every: 10`` put rungs 1, 3 and 9 all on round 10, keeping the best 1/27 there, not 1/3."""
    return policy.min_resource if policy.min_resource is not None else first_reported_step(spec)


class _Policy(SpecModel):
    evaluation_interval: int = Field(default=1, ge=1, description="apply at every multiple of this step")
    delay_evaluation: int = Field(default=0, ge=0, description="first step the policy may apply at")


class BanditPolicy(_Policy):
    """Stop a trial whose best value is not within the slack of the best trial at that step."""

    type: Literal["bandit"] = "bandit"
    slack_factor: float | None = Field(default=None, gt=0)
    slack_amount: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_slack(self) -> BanditPolicy:
        if (self.slack_factor is None) == (self.slack_amount is None):
            raise ValueError("bandit needs exactly one of slack_factor or slack_amount")
        return self


class MedianStoppingPolicy(_Policy):
    """Stop a trial whose best value is worse than the median of the others' running averages."""

    type: Literal["median_stopping"] = "median_stopping"


class TruncationSelectionPolicy(_Policy):
    """At each evaluation step, stop the trials in the lowest ``truncation_percentage`` percent."""

    type: Literal["truncation_selection"] = "truncation_selection"
    truncation_percentage: int = Field(ge=1, le=99)


class SuccessiveHalvingPolicy(SpecModel):
    """Asynchronous successive halving (ASHA): at step ``min_resource * reduction_factor**(rate + k)`` (rung
    ``k``) a trial goes on only if it is in the best ``1/reduction_factor`` of the trials that reached that
    rung. Optuna's ``SuccessiveHalvingPruner``; its rungs are kept with each trial (they survive a restart)."""

    type: Literal["successive_halving"] = "successive_halving"
    min_resource: int | None = Field(
        default=None, ge=1, description="the first rung's step; None: the first step a trial reports (first_rung)"
    )
    reduction_factor: int = Field(default=3, ge=2, le=100, description="keep the best 1/reduction_factor at a rung")
    min_early_stopping_rate: int = Field(default=0, ge=0, le=20, description="rungs skipped before the first")
    bootstrap_count: int = Field(default=0, ge=0, le=1000, description="trials a rung needs before it promotes any")


class HyperbandPolicy(SpecModel):
    """Hyperband: several successive-halving brackets, each trial in one (by a hash of the experiment id and
    the trial number, so a restarted driver puts it in the same). Optuna's ``HyperbandPruner``."""

    type: Literal["hyperband"] = "hyperband"
    min_resource: int | None = Field(
        default=None,
        ge=1,
        description="the first rung's step in the most aggressive bracket; None: the first step a trial reports",
    )
    max_resource: int | None = Field(default=None, ge=1, description="None: the steps a trial reports")
    reduction_factor: int = Field(default=3, ge=2, le=100)
    bootstrap_count: int = Field(default=0, ge=0, le=1000)

    @model_validator(mode="after")
    def _range(self) -> HyperbandPolicy:
        if self.max_resource is not None and self.min_resource is not None and self.max_resource < self.min_resource:
            raise ValueError(f"max_resource ({self.max_resource}) is below min_resource ({self.min_resource})")
        return self


class WilcoxonPolicy(SpecModel):
    """Stop a trial once a one-sided Wilcoxon signed-rank test over the folds both have finished says it is
    worse than the best trial with p below ``p_threshold`` (Optuna's ``WilcoxonPruner``, which its authors
    made for k-fold cross-validation). It compares each fold's own score, not the running mean."""

    type: Literal["wilcoxon"] = "wilcoxon"
    p_threshold: float = Field(default=0.1, gt=0, lt=1)
    n_startup_steps: int = Field(default=2, ge=0, description="folds compared before it may stop a trial")


class PatientPolicy(SpecModel):
    """Stop a trial only once its value has not improved by ``min_delta`` for ``patience`` steps, and then
    only if ``wrapped`` says so (or always, without one). Optuna's ``PatientPruner``."""

    type: Literal["patient"] = "patient"
    patience: int = Field(ge=0, description="steps without improvement before the wrapped policy is asked")
    min_delta: float = Field(default=0.0, ge=0)
    wrapped: WrappedPolicy | None = Field(default=None, description="the policy asked once patience runs out")


class ThresholdPolicy(SpecModel):
    """Stop a trial whose value leaves ``[lower, upper]`` (a diverged or useless configuration), or that
    ``wrapped`` stops. Optuna's ``ThresholdPruner``, OR-ed with the wrapped policy."""

    type: Literal["threshold"] = "threshold"
    lower: float | None = None
    upper: float | None = None
    n_warmup_steps: int = Field(default=0, ge=0)
    interval_steps: int = Field(default=1, ge=1)
    wrapped: WrappedPolicy | None = Field(default=None, description="a policy also applied")

    @model_validator(mode="after")
    def _bounds(self) -> ThresholdPolicy:
        if self.lower is None and self.upper is None:
            raise ValueError("threshold needs lower, upper or both")
        if self.lower is not None and self.upper is not None and self.lower > self.upper:
            raise ValueError(f"lower ({self.lower}) is above upper ({self.upper})")
        return self


def wrapped_of(policy: Any) -> Any | None:
    """The policy a wrapper wraps (None for one that wraps none, or is no wrapper)."""
    return getattr(policy, "wrapped", None)
