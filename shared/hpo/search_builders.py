"""The Optuna object our driver runs for each entry of the search table (:mod:`shared.spec.search_table`).

The spec's table describes every sampler and early-termination policy (its model, AzureML's form, its first
stop, its rules); the objects the engine runs are the engine's, here, one builder per ``type``
(``PRUNER_BUILDERS``, ``SAMPLER_BUILDERS``), so the spec imports nothing of the engine. Adding a policy is an
entry there and a builder here; ``tests/test_search_table.py`` fails on an entry without a builder (or a
builder without an entry), and builds each one.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shared.spec.pruning import (
    BanditPolicy,
    HyperbandPolicy,
    MedianStoppingPolicy,
    PatientPolicy,
    SuccessiveHalvingPolicy,
    ThresholdPolicy,
    TruncationSelectionPolicy,
    WilcoxonPolicy,
    first_rung,
    trial_steps,
)
from shared.spec.search_table import SAMPLERS, schedule_of

if TYPE_CHECKING:
    from shared.spec import ExperimentSpec

Builder = Callable[[Any, "ExperimentSpec"], Any]


def _bandit(p: BanditPolicy, spec: ExperimentSpec) -> Any:
    from shared.hpo.pruners import BanditPruner

    return BanditPruner(slack_factor=p.slack_factor, slack_amount=p.slack_amount, **schedule_of(p))


def _median(p: MedianStoppingPolicy, spec: ExperimentSpec) -> Any:
    from shared.hpo.pruners import MedianStoppingPruner

    return MedianStoppingPruner(**schedule_of(p))


def _truncation(p: TruncationSelectionPolicy, spec: ExperimentSpec) -> Any:
    from shared.hpo.pruners import TruncationSelectionPruner

    return TruncationSelectionPruner(p.truncation_percentage, **schedule_of(p))


def _halving(p: SuccessiveHalvingPolicy, spec: ExperimentSpec) -> Any:
    from optuna.pruners import SuccessiveHalvingPruner

    return SuccessiveHalvingPruner(
        min_resource=first_rung(p, spec),
        reduction_factor=p.reduction_factor,
        min_early_stopping_rate=p.min_early_stopping_rate,
        bootstrap_count=p.bootstrap_count,
    )


def _hyperband(p: HyperbandPolicy, spec: ExperimentSpec) -> Any:
    from optuna.pruners import HyperbandPruner

    return HyperbandPruner(
        min_resource=first_rung(p, spec),
        max_resource=p.max_resource or trial_steps(spec),
        reduction_factor=p.reduction_factor,
        bootstrap_count=p.bootstrap_count,
    )


def _wilcoxon(p: WilcoxonPolicy, spec: ExperimentSpec) -> Any:
    from shared.hpo.pruners import FoldWilcoxonPruner

    return FoldWilcoxonPruner(p_threshold=p.p_threshold, n_startup_steps=p.n_startup_steps)


def _patient(p: PatientPolicy, spec: ExperimentSpec) -> Any:
    from optuna.pruners import PatientPruner

    inner = None if p.wrapped is None else build_pruner(p.wrapped, spec)
    return PatientPruner(inner, patience=p.patience, min_delta=p.min_delta)


def _threshold(p: ThresholdPolicy, spec: ExperimentSpec) -> Any:
    from optuna.pruners import ThresholdPruner

    from shared.hpo.pruners import AnyOfPruner

    own = ThresholdPruner(
        lower=p.lower, upper=p.upper, n_warmup_steps=p.n_warmup_steps, interval_steps=p.interval_steps
    )
    return own if p.wrapped is None else AnyOfPruner(own, build_pruner(p.wrapped, spec))


def _random(s: Any, spec: ExperimentSpec) -> Any:
    from optuna.samplers import RandomSampler

    from shared.hpo.samplers import ResumableQMCSampler

    if s.rule == "sobol":
        return ResumableQMCSampler(
            qmc_type="sobol",
            scramble=True,
            seed=s.seed,
            independent_sampler=RandomSampler(seed=s.seed),
            warn_asynchronous_seeding=False,
            warn_independent_sampling=False,
        )
    return RandomSampler(seed=s.seed)


def _grid(s: Any, spec: ExperimentSpec) -> Any:
    from shared.hpo.search_space import AskTellGridSampler
    from shared.spec.search_space import Choice

    grid = {name: list(dist.values) for name, dist in spec.search_space.items() if isinstance(dist, Choice)}
    return AskTellGridSampler(grid, seed=s.seed)


CONSTRAINTS_ATTR = "constraints"
"""The user attribute the driver sets on a trial before telling it: Optuna's constraint values (<= 0 feasible)."""


def _constraints(trial: Any) -> list[float]:
    return [float(v) for v in trial.user_attrs.get(CONSTRAINTS_ATTR, [0.0])]


def constraints_func(spec: ExperimentSpec) -> Any:
    """Optuna's ``constraints_func`` for the spec's constraints (None without any)."""
    return _constraints if spec.objective.constraints else None


def startup(s: Any) -> int:
    """``n_startup_trials``: ``sampling_algorithm.startup_trials``, else the table's (Optuna's default)."""
    default = SAMPLERS[s.type].startup_trials
    return int(s.startup_trials if s.startup_trials is not None else default or 0)


def _bayesian(s: Any, spec: ExperimentSpec) -> Any:
    from optuna.samplers import TPESampler

    # With max_concurrent_trials > 1 several trials are asked before the running ones report. The constant
    # liar gives running trials a pessimistic value, so concurrent asks spread over the space instead of all
    # proposing the same promising point.
    return TPESampler(
        seed=s.seed, constant_liar=True, constraints_func=constraints_func(spec), n_startup_trials=startup(s)
    )


def _tpe(s: Any, spec: ExperimentSpec) -> Any:
    from optuna.samplers import TPESampler

    # multivariate: one Parzen estimator over the joint space (interactions between hyperparameters),
    # grouped by the parameters trials share; the constant liar as for bayesian.
    return TPESampler(
        seed=s.seed,
        multivariate=True,
        group=True,
        constant_liar=True,
        warn_independent_sampling=False,
        constraints_func=constraints_func(spec),
        n_startup_trials=startup(s),
    )


def _cmaes(s: Any, spec: ExperimentSpec) -> Any:
    from optuna.samplers import RandomSampler

    from shared.hpo.samplers import ResumableCmaEsSampler

    # CMA-ES models numbers only: a choice is drawn by the seeded random sampler beside it. Resumable: a
    # restarted driver rebuilds its optimizer from the trials (shared.hpo.samplers).
    return ResumableCmaEsSampler(
        seed=s.seed, independent_sampler=RandomSampler(seed=s.seed), warn_independent_sampling=False
    )


def _gp(s: Any, spec: ExperimentSpec) -> Any:
    from optuna.samplers import GPSampler

    return GPSampler(
        seed=s.seed,
        deterministic_objective=False,
        constraints_func=constraints_func(spec),
        n_startup_trials=startup(s),
    )


def _nsga2(s: Any, spec: ExperimentSpec) -> Any:
    from optuna.samplers import NSGAIISampler

    return NSGAIISampler(seed=s.seed, constraints_func=constraints_func(spec))


def _nsga3(s: Any, spec: ExperimentSpec) -> Any:
    from optuna.samplers import NSGAIIISampler

    return NSGAIIISampler(seed=s.seed, constraints_func=constraints_func(spec))


def _qmc(s: Any, spec: ExperimentSpec) -> Any:
    from optuna.samplers import RandomSampler

    from shared.hpo.samplers import ResumableQMCSampler

    # Resumable: a restarted driver goes on from the last point drawn (shared.hpo.samplers).
    return ResumableQMCSampler(
        qmc_type=s.rule or "sobol",
        scramble=True,
        seed=s.seed,
        independent_sampler=RandomSampler(seed=s.seed),
        warn_asynchronous_seeding=False,
        warn_independent_sampling=False,
    )


PRUNER_BUILDERS: dict[str, Builder] = {
    "bandit": _bandit,
    "median_stopping": _median,
    "truncation_selection": _truncation,
    "successive_halving": _halving,
    "hyperband": _hyperband,
    "wilcoxon": _wilcoxon,
    "patient": _patient,
    "threshold": _threshold,
}
"""``early_termination.type`` -> the Optuna pruner our driver runs."""
SAMPLER_BUILDERS: dict[str, Builder] = {
    "random": _random,
    "grid": _grid,
    "bayesian": _bayesian,
    "tpe": _tpe,
    "cmaes": _cmaes,
    "gp": _gp,
    "qmc": _qmc,
    "nsga2": _nsga2,
    "nsga3": _nsga3,
}
"""``sampling_algorithm.type`` -> the Optuna sampler our driver runs."""


def build_pruner(policy: Any, spec: ExperimentSpec) -> Any:
    """The Optuna pruner for one ``early_termination`` section (Optuna's experimental warnings silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=Warning)
        return PRUNER_BUILDERS[policy.type](policy, spec)


def build_sampler(spec: ExperimentSpec) -> Any:
    """The Optuna sampler for ``spec.sampling_algorithm`` (Optuna's experimental warnings silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=Warning)
        return SAMPLER_BUILDERS[spec.sampling_algorithm.type](spec.sampling_algorithm, spec)
