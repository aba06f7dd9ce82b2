"""Samplers keep their place across a driver restart: a run whose driver is SIGKILLed mid-trial and restarted
asks every trial the parameters an uninterrupted run of the same spec and seed asks (real Dask clusters, a
real SIGKILL of the driver's process and its in-process cluster; tests/test_pruner_restart.py's harness).

Before shared/hpo/samplers.py, QMC counted its points in a study attribute the rebuilt study lacked (the
restarted run drew the sequence from its start again), and CMA-ES kept its optimizer as a pickled trial
attribute the records drop (the restarted run began a fresh optimizer at the first generation's mean).
"""

from __future__ import annotations

import pytest
from distributed import Client

from shared.hpo.driver import HpoDriver
from shared.records import TrialState
from shared.store.local import LocalStore
from tests.test_hpo_driver import make_spec, new_experiment
from tests.test_pruner_restart import FOLDS, client, kill_mid_trial
from tests.trial_functions import scripted_trial

__all__ = ["client"]  # the module-scoped Dask cluster fixture

TRIALS = 16
"""CMA-ES's population is 6 for two numbers: trials 1-6 are its first generation, 7 tells it and 13 the next."""


def spec_for(sampling: dict):
    return make_spec(
        trial={"model": "random_forest", "cv_folds": FOLDS},
        search_space={
            "max_features": {"type": "uniform", "min_value": 0.2, "max_value": 1.0},
            "max_depth": {"type": "quniform", "min_value": 2, "max_value": 12, "q": 1},
            "n_estimators": {"type": "choice", "values": [60]},  # ms per fold (scripted_trial)
        },
        sampling_algorithm=sampling,
        limits={"max_total_trials": TRIALS, "max_concurrent_trials": 1},
    )


def draws(store: LocalStore, experiment_id: str) -> list[tuple[int, str, dict]]:
    """Per trial: number, how it ended, and every parameter the sampler suggested."""
    return [(t.number, t.state.value, t.sampler_params) for t in store.list_trials(experiment_id)]


@pytest.mark.parametrize(
    "sampling",
    [
        pytest.param(  # the default run checks QMC's resume in miniature (the corrupt-record test's clean study)
            {"type": "qmc", "seed": 5, "rule": "sobol"}, id="qmc-sobol", marks=pytest.mark.slow
        ),
        pytest.param({"type": "qmc", "seed": 5, "rule": "halton"}, id="qmc-halton", marks=pytest.mark.slow),
        pytest.param({"type": "random", "seed": 5, "rule": "sobol"}, id="random-sobol", marks=pytest.mark.slow),
        pytest.param({"type": "cmaes", "seed": 5}, id="cmaes", marks=pytest.mark.slow),  # 15 s at load 5; CI runs it
    ],
)
def test_a_restarted_driver_asks_what_an_uninterrupted_run_asks(client: Client, tmp_path, sampling: dict) -> None:
    spec = spec_for(sampling)
    store = LocalStore(tmp_path / "store")
    whole = new_experiment(store, spec)
    HpoDriver(spec, whole, store, client, trial_fn=scripted_trial, poll_interval=0.02).run()
    expected = draws(store, whole)
    assert len(expected) == TRIALS and len({str(p) for _, _, p in expected}) == TRIALS  # all distinct

    restarted = new_experiment(store, spec)
    interrupted = kill_mid_trial(store, restarted, tmp_path / "store", after=9)
    left = {t.number: t for t in store.list_trials(restarted)}
    assert left[interrupted].state is TrialState.RUNNING and len(left) < TRIALS
    HpoDriver(spec, restarted, store, client, trial_fn=scripted_trial, poll_interval=0.02).run()
    assert draws(store, restarted) == expected
    assert {t.number: t for t in store.list_trials(restarted)}[interrupted].attempt == 2


def rebuilt(spec, generation_attrs: list[dict]):
    """A study rebuilt as a restarted driver rebuilds it: finished trials (drawn by the sampler) given back
    with the given system attributes only."""
    import optuna

    from shared.hpo.search_space import make_sampler, suggest_params

    source = optuna.create_study(sampler=make_sampler(spec))
    for _ in generation_attrs:
        trial = source.ask()
        suggest_params(trial, spec)
        source.tell(trial, 0.5)
    study = optuna.create_study(sampler=make_sampler(spec))
    for done, attrs in zip(source.trials, generation_attrs, strict=True):
        study.add_trial(
            optuna.trial.create_trial(
                params=done.params, distributions=done.distributions, value=0.5, system_attrs=attrs
            )
        )
    trial = study.ask()
    params = suggest_params(trial, spec)
    return params, study._storage.get_trial_system_attrs(trial._trial_id)


@pytest.mark.parametrize("bad", [1e12, -3.0, 2.5, 10.0])
def test_a_corrupt_record_cannot_move_qmc_along_its_sequence(bad: float) -> None:
    """An index a record carries is believed only as a whole number up to the study's trial count: a huge,
    negative or fractional one (or one past the trials) is ignored, and the sequence goes on from the rest."""
    from shared.hpo.samplers import QMC_SAMPLE_ID

    spec = spec_for({"type": "qmc", "seed": 5, "rule": "sobol"})
    _, clean = rebuilt(spec, [{}, {QMC_SAMPLE_ID: 0}, {QMC_SAMPLE_ID: 1}])
    _, hostile = rebuilt(spec, [{}, {QMC_SAMPLE_ID: 0}, {QMC_SAMPLE_ID: bad}])
    assert (clean[QMC_SAMPLE_ID], hostile[QMC_SAMPLE_ID]) == (2, 1)  # the corrupt index ignored


def test_a_corrupt_generation_starts_cma_es_afresh_rather_than_failing() -> None:
    """A generation no run of the sampler reaches (its solutions missing) gives a fresh optimizer, not an error."""
    spec = spec_for({"type": "cmaes", "seed": 5})
    params, attrs = rebuilt(spec, [{}, {"cma:generation": 0}, {"cma:generation": 2}])
    assert 0.2 <= params["max_features"] <= 1.0 and attrs["cma:generation"] == 0
