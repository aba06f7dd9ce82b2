"""An :class:`~shared.spec.ExperimentSpec` as Optuna objects: the sampler, the pruner and each trial's params.

Every search-space entry is sampled through the trial's ``suggest_*`` methods, so Optuna's samplers see
(and learn from) it, and the returned values follow AzureML's semantics:

=================  =====================================================================================
``choice``         ``suggest_categorical(name, values)``
``randint(u)``     ``suggest_int(name, 0, u - 1)``
``uniform``        ``suggest_float(name, min_value, max_value)``
``quniform``       the same, then ``round(x / q) * q``
``loguniform``     ``suggest_float(name, exp(min_value), exp(max_value), log=True)``: the same distribution
                   as AzureML's ``exp(uniform(min_value, max_value))``, and Optuna records the real value
``qloguniform``    the same, then ``round(x / q) * q``
``normal`` & co.   Optuna has no normal distribution: ``u = suggest_float(name + "__u", 0, 1)`` and the
                   value is ``NormalDist(mu, sigma).inv_cdf(u)`` (u kept 1e-12 away from 0 and 1), exact
                   for random sampling; ``lognormal`` takes ``exp`` of it; q-forms round to multiples of q
=================  =====================================================================================

Then an integer hyperparameter is rounded to the nearest integer and the value is clipped to the
hyperparameter's valid range (only unbounded distributions can leave it: the spec checked the others),
see :func:`shared.spec.finish_value`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

import optuna
from optuna.pruners import BasePruner, NopPruner
from optuna.samplers import BaseSampler, GridSampler
from optuna.samplers._lazy_random_state import LazyRandomState

from gpu_jobs.params import HYPERPARAMETERS, HyperParameter, validate_params
from shared.hpo.search_builders import build_pruner, build_sampler
from shared.spec import (
    Choice,
    ExperimentSpec,
    LogNormal,
    LogUniform,
    Normal,
    QLogNormal,
    QLogUniform,
    QNormal,
    QUniform,
    RandInt,
    Uniform,
    finish_value,
    quantize,
    safe_exp,
)

NORMAL_SUFFIX = "__u"
"""Optuna parameter ``<name>__u`` holds the uniform draw behind a (log)normal hyperparameter ``<name>``."""
_U_EPSILON = 1e-12


class AskTellGridSampler(GridSampler):
    """Optuna's ``GridSampler``, usable in an ask/tell loop.

    ``GridSampler.after_trial`` calls ``study.stop()`` once the grid is used up, and ``stop()`` raises
    ``RuntimeError`` outside ``study.optimize``, so ``study.tell`` of the last grid point would raise
    (after storing the result). Ask/tell callers stop by themselves at
    :meth:`~shared.spec.ExperimentSpec.effective_total_trials`; inside ``optimize`` the stop still works.
    """

    def after_trial(
        self,
        study: optuna.Study,
        trial: optuna.trial.FrozenTrial,
        state: optuna.trial.TrialState,
        values: Sequence[float] | None,
    ) -> None:
        try:
            super().after_trial(study, trial, state, values)
        except RuntimeError as exc:
            if "Study.stop" not in str(exc):
                raise


def make_sampler(spec: ExperimentSpec) -> BaseSampler:
    """The Optuna sampler for ``spec.sampling_algorithm`` (seeded with its ``seed``): the table's entry."""
    sampler: BaseSampler = build_sampler(spec)
    return sampler


def reseed_for_trial(sampler: BaseSampler, seed: int, number: int) -> None:
    """Seed the sampler's random states for trial ``number`` alone: its draw then depends on the seed, the
    number and the trials before it, not on how many draws this process made before. A driver restarted
    mid-run (its study rebuilt, its sampler new) therefore draws what an uninterrupted run draws, and
    random sampling repeats whatever order concurrent trials end in."""
    for index, state in enumerate(_random_states(sampler)):
        state.rng.seed((seed * 1_000_003 + number * 7_919 + index) % 2**32)


def _random_states(sampler: object, depth: int = 0) -> list[LazyRandomState]:
    """The sampler's ``LazyRandomState``s and those of the samplers it holds (TPE's random sampler, QMC's
    independent one), in attribute order."""
    found: list[LazyRandomState] = []
    for value in vars(sampler).values():
        if isinstance(value, LazyRandomState):
            found.append(value)
        elif isinstance(value, BaseSampler) and depth < 3:
            found += _random_states(value, depth + 1)
    return found


def make_pruner(spec: ExperimentSpec) -> BasePruner:
    """The pruner for ``spec.early_termination`` (``NopPruner`` when there is none): the table's entry."""
    if spec.early_termination is None:
        return NopPruner()
    pruner: BasePruner = build_pruner(spec.early_termination, spec)
    return pruner


def suggest_params(trial: optuna.trial.BaseTrial, spec: ExperimentSpec) -> dict[str, Any]:
    """Sample the search space on ``trial``; return the full hyperparameters for ``gpu_jobs``.

    That is ``spec.trial.params`` (fixed), the sampled values, and the table's defaults for the rest,
    checked by :func:`gpu_jobs.params.validate_params`. Works with ``optuna.trial.FixedTrial`` too, to
    rebuild a recorded trial from its ``trial.params``.
    """
    table = HYPERPARAMETERS[spec.trial.model]
    sampled = {name: _suggest(trial, name, dist, table[name]) for name, dist in spec.search_space.items()}
    return validate_params(spec.trial.model, {**spec.trial.params, **sampled})


def _suggest(trial: optuna.trial.BaseTrial, name: str, dist: Any, hp: HyperParameter) -> float | int:
    value: float
    if isinstance(dist, Choice):
        value = trial.suggest_categorical(name, dist.values)
    elif isinstance(dist, RandInt):
        value = trial.suggest_int(name, 0, dist.upper - 1)
    elif isinstance(dist, (Uniform, QUniform)):
        value = trial.suggest_float(name, dist.min_value, dist.max_value)
    elif isinstance(dist, (LogUniform, QLogUniform)):
        value = trial.suggest_float(name, math.exp(dist.min_value), math.exp(dist.max_value), log=True)
    elif isinstance(dist, (Normal, QNormal, LogNormal, QLogNormal)):
        u = trial.suggest_float(name + NORMAL_SUFFIX, 0.0, 1.0)
        value = NormalDist(dist.mu, dist.sigma).inv_cdf(min(max(u, _U_EPSILON), 1.0 - _U_EPSILON))
        if isinstance(dist, (LogNormal, QLogNormal)):
            value = safe_exp(value)
    else:
        raise TypeError(f"unknown distribution {type(dist).__name__} for {name}")
    q = getattr(dist, "q", None)
    if q is not None:
        value = quantize(value, q)
    return finish_value(value, hp)
