"""A warm start on the driver: the seed the control plane read at submit (``ExperimentRecord.warm_start``)
becomes trials of the Optuna study, or configurations run first.

* **Same search space** (and model and objective): each completed trial is added to the study as a
  finished trial with its value (rebuilt from its ``sampler_params`` as a resumed trial is), so the
  sampler learns from them; they are not this experiment's trials (no number, no budget, no record).
* **Changed space**: the best configurations, best first, are run first: each hyperparameter the new
  space searches and whose value it can produce is fixed (a ``choice`` holding the value, a range
  containing it; a (log)normal's value mapped back to the uniform draw behind it); the rest is sampled.
  A configuration is skipped if a trial of this experiment already ran it (a restarted driver goes on
  where it stopped), or if none of its values fits the new space.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from statistics import NormalDist
from typing import Any

import optuna

from shared.hpo.search_space import NORMAL_SUFFIX, suggest_params
from shared.records import WarmStartSeed
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
)


def seed_study(study: optuna.Study, spec: ExperimentSpec, seed: WarmStartSeed) -> list[dict[str, Any]]:
    """Add a same-space seed's trials to ``study``; return a changed-space seed's configurations to run
    first (as Optuna parameters, best first), which :func:`next_config` hands out."""
    if not seed.same_space:
        configs = (optuna_params(spec, trial.params) for trial in seed.trials)
        return [config for config in configs if config]
    for trial in seed.trials:
        fixed = optuna.trial.FixedTrial(dict(trial.sampler_params))
        try:
            suggest_params(fixed, spec)
        except (ValueError, TypeError):  # a value the space cannot hold: it informs nothing
            continue
        study.add_trial(
            optuna.trial.create_trial(params=fixed.params, distributions=fixed.distributions, value=trial.value)
        )
    return []


def next_config(study: optuna.Study, configs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Take the first configuration no trial of ``study`` has run yet (dropping those run), or None."""
    while configs:
        config = configs.pop(0)
        if not any(_ran(trial.params, config) for trial in study.get_trials(deepcopy=False)):
            return config
    return None


def _ran(params: Mapping[str, Any], config: Mapping[str, Any]) -> bool:
    return all(name in params and params[name] == value for name, value in config.items())


def optuna_params(spec: ExperimentSpec, values: Mapping[str, Any]) -> dict[str, Any]:
    """The Optuna parameters that make ``spec``'s space produce ``values`` (those it can)."""
    params: dict[str, Any] = {}
    for name, dist in spec.search_space.items():
        value = values.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            continue
        param = _param(dist, float(value))
        if param is not None:
            is_draw, optuna_value = param
            params[name + NORMAL_SUFFIX if is_draw else name] = optuna_value
    return params


def _param(dist: Any, value: float) -> tuple[bool, Any] | None:
    """``(is_uniform_draw, the Optuna value)`` behind ``value`` in ``dist``, or None if it cannot produce it."""
    if isinstance(dist, Choice):
        return (False, value) if value in dist.values else None
    if isinstance(dist, RandInt):
        return (False, int(value)) if value == int(value) and 0 <= value < dist.upper else None
    if isinstance(dist, Uniform | QUniform):
        return (False, value) if dist.min_value <= value <= dist.max_value else None
    if isinstance(dist, LogUniform | QLogUniform):
        inside = value > 0 and dist.min_value <= math.log(value) <= dist.max_value
        return (False, value) if inside else None
    if isinstance(dist, Normal | QNormal | LogNormal | QLogNormal):
        if isinstance(dist, LogNormal | QLogNormal):
            if value <= 0:
                return None
            value = math.log(value)
        u = NormalDist(dist.mu, dist.sigma).cdf(value)
        return (True, u) if 0.0 < u < 1.0 else None
    return None
