"""Spec -> Optuna: AzureML's distribution semantics, sampler and pruner mapping, reproducibility."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import optuna
import pytest

from gpu_jobs.params import HYPERPARAMETERS
from shared.hpo import (
    BanditPruner,
    MedianStoppingPruner,
    TruncationSelectionPruner,
    make_pruner,
    make_sampler,
    suggest_params,
)
from shared.hpo.samplers import ResumableQMCSampler
from shared.hpo.search_space import AskTellGridSampler
from shared.spec import ExperimentSpec, load_spec

optuna.logging.set_verbosity(optuna.logging.WARNING)
ROOT = Path(__file__).resolve().parents[1]


def make_spec(
    search_space: dict[str, Any],
    model: str = "xgboost",
    sampling: Any = None,
    params: dict[str, Any] | None = None,
    **extra: Any,
) -> ExperimentSpec:
    document = {
        "name": "search-space-test",
        "dataset": {"uri": "data.csv", "target": "y"},
        "trial": {"model": model, "params": params or {}},
        "search_space": search_space,
        "sampling_algorithm": sampling or {"type": "random", "seed": 0},
        **extra,
    }
    return load_spec(document)


def draw(spec: ExperimentSpec, n: int, objective: Any = None) -> list[dict[str, Any]]:
    """Ask/tell ``n`` trials sequentially; return the parameters each got."""
    study = optuna.create_study(direction=spec.objective.goal, sampler=make_sampler(spec))
    out = []
    for _ in range(n):
        trial = study.ask()
        params = suggest_params(trial, spec)
        out.append(params)
        study.tell(trial, objective(params) if objective else 0.0)
    return out


def values(spec: ExperimentSpec, name: str, n: int = 2000) -> list[Any]:
    return [params[name] for params in draw(spec, n)]


# ------------------------------------------------------------------------------------ distributions
def test_choice() -> None:
    got = values(make_spec({"max_depth": {"type": "choice", "values": [3, 6, 9]}}), "max_depth", 300)
    assert set(got) == {3, 6, 9}


def test_randint_is_zero_to_upper_exclusive() -> None:
    got = values(make_spec({"max_depth": {"type": "randint", "upper": 5}}), "max_depth", 500)
    assert set(got) == {0, 1, 2, 3, 4}
    assert all(type(v) is int for v in got)


def test_uniform() -> None:
    got = values(make_spec({"subsample": {"type": "uniform", "min_value": 0.5, "max_value": 0.9}}), "subsample")
    assert 0.5 <= min(got) < 0.52 and 0.88 < max(got) <= 0.9
    assert statistics.fmean(got) == pytest.approx(0.7, abs=0.01)


def test_uniform_for_an_integer_hyperparameter_is_rounded() -> None:
    spec = make_spec({"n_estimators": {"type": "uniform", "min_value": 10, "max_value": 20}}, model="random_forest")
    got = values(spec, "n_estimators", 1000)
    assert all(type(v) is int for v in got)
    assert set(got) == set(range(10, 21))


def test_quniform_gives_clean_multiples_of_q() -> None:
    spec = make_spec(
        {"max_features": {"type": "quniform", "min_value": 0.2, "max_value": 1.0, "q": 0.1}},
        model="random_forest",
    )
    got = set(values(spec, "max_features", 1000))
    assert got == {0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0}


def test_loguniform_bounds_are_exponents() -> None:
    low, high = math.log(0.01), math.log(0.3)
    got = values(
        make_spec({"learning_rate": {"type": "loguniform", "min_value": low, "max_value": high}}),
        "learning_rate",
    )
    assert 0.01 <= min(got) < 0.011 and 0.28 < max(got) <= 0.3
    logs = [math.log(v) for v in got]
    # exp(uniform(low, high)): the logarithm is uniform, so its mean is the midpoint and the median value
    # is the geometric mean (a uniform draw over [0.01, 0.3] would have a median near 0.155).
    assert statistics.fmean(logs) == pytest.approx((low + high) / 2, abs=0.05)
    assert statistics.median(got) == pytest.approx(math.sqrt(0.01 * 0.3), rel=0.1)


def test_qloguniform() -> None:
    spec = make_spec({"gamma": {"type": "qloguniform", "min_value": 0.0, "max_value": 3.0, "q": 0.5}})
    got = values(spec, "gamma", 1000)
    assert all(v / 0.5 == round(v / 0.5) for v in got)
    assert min(got) == 1.0 and max(got) == 20.0  # round(e^0 / 0.5) * 0.5 .. round(e^3 / 0.5) * 0.5


def test_normal_mean_and_spread() -> None:
    got = values(make_spec({"gamma": {"type": "normal", "mu": 50, "sigma": 5}}), "gamma")
    assert statistics.fmean(got) == pytest.approx(50, abs=0.5)
    assert statistics.stdev(got) == pytest.approx(5, abs=0.4)


def test_normal_is_sampled_through_a_uniform_optuna_parameter() -> None:
    spec = make_spec({"gamma": {"type": "normal", "mu": 50, "sigma": 5}})
    study = optuna.create_study(sampler=make_sampler(spec))
    trial = study.ask()
    suggest_params(trial, spec)
    assert set(trial.params) == {"gamma__u"}
    assert 0.0 <= trial.params["gamma__u"] <= 1.0


def test_lognormal() -> None:
    got = values(make_spec({"gamma": {"type": "lognormal", "mu": 0.0, "sigma": 0.5}}), "gamma")
    logs = [math.log(v) for v in got]
    assert min(got) > 0
    assert statistics.fmean(logs) == pytest.approx(0.0, abs=0.05)
    assert statistics.stdev(logs) == pytest.approx(0.5, abs=0.04)


def test_qnormal() -> None:
    got = values(
        make_spec({"min_child_weight": {"type": "qnormal", "mu": 20, "sigma": 3, "q": 2}}),
        "min_child_weight",
        500,
    )
    assert all(v % 2 == 0 for v in got)
    assert statistics.fmean(got) == pytest.approx(20, abs=0.5)


def test_qlognormal_for_an_integer_hyperparameter() -> None:
    spec = make_spec({"max_depth": {"type": "qlognormal", "mu": 1.8, "sigma": 0.3, "q": 2}})
    got = values(spec, "max_depth", 500)
    assert all(type(v) is int and v % 2 == 0 for v in got)


def test_normal_for_an_integer_hyperparameter_is_rounded() -> None:
    got = values(make_spec({"num_boost_round": {"type": "normal", "mu": 100, "sigma": 10}}), "num_boost_round", 500)
    assert all(type(v) is int for v in got)
    assert statistics.fmean(got) == pytest.approx(100, abs=1.5)


def test_unbounded_values_are_clipped_to_the_valid_range() -> None:
    spec = make_spec({"n_estimators": {"type": "normal", "mu": 1, "sigma": 10}}, model="random_forest")
    got = values(spec, "n_estimators", 500)
    assert min(got) == 1  # about half the draws fall below 1 and are clipped there
    assert sum(v == 1 for v in got) > 150
    lognormal = make_spec({"learning_rate": {"type": "lognormal", "mu": 0.0, "sigma": 1.0}})
    got = values(lognormal, "learning_rate", 500)
    assert max(got) == 1.0 and min(got) > 0  # learning_rate is in (0, 1]


# ------------------------------------------------------------------------------------ full params
def test_params_are_fixed_plus_sampled_plus_defaults() -> None:
    spec = make_spec(
        {"max_depth": {"type": "choice", "values": [5, 6]}},
        model="random_forest",
        params={"n_bins": 64},
    )
    params = draw(spec, 1)[0]
    assert set(params) == set(HYPERPARAMETERS["random_forest"])
    assert params["n_bins"] == 64 and params["max_depth"] in {5, 6}
    assert params["n_estimators"] == 100  # the table's default


def test_a_recorded_trial_rebuilds_with_fixed_trial() -> None:
    spec = load_spec(ROOT / "examples" / "flights-xgb.yaml")
    study = optuna.create_study(sampler=make_sampler(spec))
    trial = study.ask()
    params = suggest_params(trial, spec)
    assert suggest_params(optuna.trial.FixedTrial(trial.params), spec) == params


def test_example_params_are_in_range() -> None:
    for name in ("flights-rf.yaml", "flights-xgb.yaml"):
        spec = load_spec(ROOT / "examples" / name)
        table = HYPERPARAMETERS[spec.trial.model]
        for params in draw(spec, 50):
            for key, value in params.items():
                assert table[key].check(value) == value


# ----------------------------------------------------------------------------- samplers and pruners
@pytest.mark.parametrize(
    ("sampling", "sampler_type"),
    [
        ({"type": "random"}, optuna.samplers.RandomSampler),
        ({"type": "random", "seed": 3, "rule": "sobol"}, ResumableQMCSampler),  # Optuna's, resumable
        ({"type": "grid"}, AskTellGridSampler),
        ({"type": "bayesian"}, optuna.samplers.TPESampler),
    ],
)
def test_sampler_mapping(sampling: dict[str, Any], sampler_type: type) -> None:
    spec = make_spec({"max_depth": {"type": "choice", "values": [3, 6]}}, sampling=sampling)
    assert type(make_sampler(spec)) is sampler_type


def test_grid_visits_every_combination_once() -> None:
    space = {
        "max_depth": {"type": "choice", "values": [3, 6, 9]},
        "subsample": {"type": "choice", "values": [0.5, 1.0]},
    }
    spec = make_spec(space, sampling={"type": "grid", "seed": 1}, limits={"max_total_trials": 100})
    assert spec.effective_total_trials() == 6
    combos = [(p["max_depth"], p["subsample"]) for p in draw(spec, 6)]  # tell() of the last one must not raise
    assert sorted(combos) == [(d, s) for d in (3, 6, 9) for s in (0.5, 1.0)]
    assert isinstance(make_sampler(spec), optuna.samplers.GridSampler)


def test_grid_still_stops_study_optimize() -> None:
    spec = make_spec({"max_depth": {"type": "choice", "values": [3, 6, 9]}}, sampling={"type": "grid", "seed": 1})
    study = optuna.create_study(sampler=make_sampler(spec))
    study.optimize(lambda trial: suggest_params(trial, spec)["max_depth"], n_trials=50)
    assert len(study.trials) == 3


def test_sobol_draws_are_in_range() -> None:
    spec = make_spec(
        {"subsample": {"type": "uniform", "min_value": 0.5, "max_value": 1.0}},
        sampling={"type": "random", "seed": 5, "rule": "sobol"},
    )
    got = values(spec, "subsample", 64)
    assert all(0.5 <= v <= 1.0 for v in got)
    assert got == values(spec, "subsample", 64)


@pytest.mark.parametrize(
    ("policy", "pruner_type", "attrs"),
    [
        (None, optuna.pruners.NopPruner, {}),
        (
            {"type": "bandit", "slack_amount": 0.05, "evaluation_interval": 2, "delay_evaluation": 1},
            BanditPruner,
            {"slack_amount": 0.05, "slack_factor": None, "evaluation_interval": 2, "delay_evaluation": 1},
        ),
        ({"type": "median_stopping", "delay_evaluation": 3}, MedianStoppingPruner, {"delay_evaluation": 3}),
        (
            {"type": "truncation_selection", "truncation_percentage": 30},
            TruncationSelectionPruner,
            {"truncation_percentage": 30, "evaluation_interval": 1},
        ),
    ],
)
def test_pruner_mapping(policy: dict[str, Any] | None, pruner_type: type, attrs: dict[str, Any]) -> None:
    spec = make_spec({"max_depth": {"type": "choice", "values": [3, 6]}}, early_termination=policy)
    pruner = make_pruner(spec)
    assert type(pruner) is pruner_type
    for name, value in attrs.items():
        assert getattr(pruner, name) == value


# ---------------------------------------------------------------------------------- reproducibility
MIXED_SPACE = {
    "learning_rate": {"type": "uniform", "min_value": 0.01, "max_value": 0.3},
    "max_depth": {"type": "choice", "values": [3, 4, 5, 6, 7, 8]},
    "num_boost_round": {"type": "quniform", "min_value": 50, "max_value": 300, "q": 25},
}
GRID_SPACE = {
    "max_depth": {"type": "choice", "values": [3, 4, 5, 6]},
    "subsample": {"type": "choice", "values": [0.5, 0.75, 1.0]},
}


def _objective(params: dict[str, Any]) -> float:
    return -((params["learning_rate"] - 0.1) ** 2) - 0.01 * abs(params["max_depth"] - 5)


@pytest.mark.parametrize(
    ("algorithm", "space", "n", "objective"),
    [
        ("random", MIXED_SPACE, 12, None),
        ("grid", GRID_SPACE, 12, None),
        ("bayesian", MIXED_SPACE, 14, _objective),  # past TPE's 10 random start-up trials
    ],
)
def test_same_seed_same_sequence(algorithm: str, space: dict[str, Any], n: int, objective: Any) -> None:
    def sequence(seed: int) -> list[dict[str, Any]]:
        spec = make_spec(space, sampling={"type": algorithm, "seed": seed}, limits={"max_total_trials": n})
        return draw(spec, n, objective)

    first = sequence(11)
    assert sequence(11) == first
    assert sequence(12) != first
