"""``warm_start: {experiment: <id>}`` (shared/handlers/warm_start.py, shared/hpo/warm_start.py): the referenced
experiment is read at submit through the store as the API would let the caller read it; a missing, unseen,
unfinished or empty one is a 422 at warm_start.experiment; on the same space its trials seed the sampler,
on a changed one its best configurations run first, and a restarted driver goes on where it stopped."""

from __future__ import annotations

import json
from typing import Any

import optuna
import pytest
from distributed import Client
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.api import create_api
from shared.context import Context
from shared.hpo.driver import HpoDriver
from shared.hpo.search_space import suggest_params
from shared.hpo.warm_start import optuna_params
from shared.records import (
    ExperimentRecord,
    ExperimentStatus,
    SubmittedBy,
    TrialRecord,
    TrialState,
    WarmStartSeed,
    WarmTrial,
)
from shared.spec import ExperimentSpec, SpecError, load_spec
from shared.store.local import LocalStore
from tests.control_plane import tiny_spec
from tests.test_auth import READ, SUBMIT, api, bearer
from tests.trial_functions import scripted_trial

EARLIER = "exp-earlier-1"
VALUES = {0: 0.70, 1: 0.91, 2: 0.80, 3: 0.95, 4: 0.60}
"""trial number -> accuracy of the earlier experiment: best first 3, 1, 2, 0, 4."""


def trial_params(number: int) -> dict[str, Any]:
    return {
        "n_estimators": [5, 10][number % 2],
        "max_depth": [4, 6][number // 2 % 2],
        "max_features": 0.3 + number / 10,
    }


def finished(
    store: LocalStore,
    status: ExperimentStatus = ExperimentStatus.COMPLETED,
    owner: SubmittedBy | None = None,
    experiment_id: str = EARLIER,
    states: dict[int, TrialState] | None = None,
) -> str:
    store.create_experiment(
        ExperimentRecord(id=experiment_id, name="earlier", spec=tiny_spec(), status=status, submitted_by=owner)
    )
    for number, value in VALUES.items():
        params = trial_params(number)
        state = (states or {}).get(number, TrialState.COMPLETED)
        store.put_trial(
            TrialRecord(
                experiment_id=experiment_id,
                number=number,
                params={**params, "n_bins": 32, "min_samples_leaf": 1},
                sampler_params=params,
                state=state,
                value=value if state is TrialState.COMPLETED else None,
            )
        )
    return experiment_id


def post(client: TestClient, document: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    return client.post(
        "/api/experiments",
        content=json.dumps(document),
        headers={"content-type": "application/json", **(headers or {})},
    )


def refused_at_warm_start(response: Any, *words: str) -> None:
    assert response.status_code == 422, response.text
    errors = response.json()["errors"]
    assert [e["loc"] for e in errors] == ["warm_start.experiment"], errors
    assert all(word in errors[0]["msg"] for word in words), errors


# ------------------------------------------------------------------------------------------ submit
def test_a_finished_experiment_on_the_same_space_seeds_with_its_trials_best_first(ctx: Context) -> None:
    finished(ctx.store)
    client = TestClient(create_api(context=ctx), base_url="http://localhost")
    response = post(client, tiny_spec(warm_start={"experiment": EARLIER}))
    assert response.status_code == 202, response.text
    seed = ctx.store.get_experiment(response.json()["id"]).warm_start
    assert seed is not None and seed.same_space and seed.goal == "maximize"
    assert [t.number for t in seed.trials] == [3, 1, 2, 0, 4]


def test_a_changed_space_keeps_only_the_best_n(ctx: Context) -> None:
    finished(ctx.store)
    client = TestClient(create_api(context=ctx), base_url="http://localhost")
    changed = tiny_spec(warm_start={"experiment": EARLIER, "best": 2})
    changed["search_space"] = {**changed["search_space"], "max_depth": {"type": "choice", "values": [4, 6, 8]}}
    seed = ctx.store.get_experiment(post(client, changed).json()["id"]).warm_start
    assert seed is not None and not seed.same_space and [t.number for t in seed.trials] == [3, 1]


@pytest.mark.parametrize(
    ("status", "states", "words"),
    [
        (ExperimentStatus.RUNNING, None, ("is RUNNING", "finished")),
        (ExperimentStatus.COMPLETED, dict.fromkeys(VALUES, TrialState.FAILED), ("no completed trial",)),
    ],
)
def test_an_unfinished_or_empty_experiment_is_a_422(ctx: Context, status: Any, states: Any, words: Any) -> None:
    finished(ctx.store, status, states=states)
    client = TestClient(create_api(context=ctx), base_url="http://localhost")
    refused_at_warm_start(post(client, tiny_spec(warm_start={"experiment": EARLIER})), *words)


def test_a_missing_experiment_is_a_422_and_nothing_is_stored(ctx: Context) -> None:
    client = TestClient(create_api(context=ctx), base_url="http://localhost")
    refused_at_warm_start(post(client, tiny_spec(warm_start={"experiment": "exp-nowhere"})), "no experiment")
    assert ctx.store.list_experiments()[0] == []


def test_another_callers_experiment_is_as_missing_unless_the_caller_may_read_it(ctx: Context, issuer: Any) -> None:
    ada, bob = issuer.user_claims(SUBMIT, READ), issuer.user_claims(SUBMIT, READ, name="Bob")
    own = api(ctx, issuer.settings())
    ada_id = post(own, tiny_spec(), bearer(issuer.token(ada))).json()["id"]
    record = ctx.store.get_experiment(ada_id)
    ctx.store.update_experiment(record.model_copy(update={"status": ExperimentStatus.COMPLETED}))
    finished(ctx.store, experiment_id="exp-ada-trials", owner=record.submitted_by)
    document = tiny_spec(warm_start={"experiment": "exp-ada-trials"})
    refused_at_warm_start(post(own, document, bearer(issuer.token(bob))), "no experiment", "not one you may read")
    assert post(own, document, bearer(issuer.token(ada))).status_code == 202
    everyone = api(ctx, issuer.settings(readers_see="all"))
    assert post(everyone, document, bearer(issuer.token(bob))).status_code == 202


def test_azureml_refuses_warm_start_naming_the_field() -> None:
    with pytest.raises(SpecError) as caught:
        load_spec(tiny_spec(warm_start={"experiment": EARLIER}, compute={"backend": "azureml"}))
    assert "warm_start" in [e["loc"] for e in caught.value.errors]


@settings(max_examples=200, deadline=None)
@given(
    section=st.one_of(
        st.none(),
        st.integers(),
        st.text(max_size=8),
        st.fixed_dictionaries(
            {"experiment": st.one_of(st.text(max_size=80), st.integers(), st.none())},
            optional={"best": st.one_of(st.integers(-5, 200), st.floats(), st.text(max_size=3)), "x": st.none()},
        ),
    ),
    report_every=st.one_of(st.none(), st.integers(-3, 20_000), st.floats(), st.text(max_size=4), st.booleans()),
)
def test_the_new_fields_load_or_fail_at_their_own_location(section: Any, report_every: Any) -> None:
    document = tiny_spec(warm_start=section)
    document["trial"] = {**document["trial"], "report_every": report_every}
    try:
        spec = load_spec(document)
    except SpecError as exc:
        assert all(e["loc"].startswith(("warm_start", "trial.report_every")) for e in exc.errors), exc.errors
        return
    if spec.warm_start is not None:
        assert 1 <= spec.warm_start.best <= 100 and spec.warm_start.experiment == section["experiment"]
    assert spec.trial.report_every is None or 1 <= spec.trial.report_every <= 10_000


# ------------------------------------------------------------------------------------------ driver
def seed_of(store: LocalStore, spec: ExperimentSpec) -> WarmStartSeed:
    from shared.handlers.warm_start import read_seed

    seed = read_seed(store, spec, lambda record: True)
    assert seed is not None
    return seed


def new(store: LocalStore, spec: ExperimentSpec, experiment_id: str) -> str:
    store.create_experiment(ExperimentRecord(id=experiment_id, name=spec.name, spec=spec.to_document()))
    return experiment_id


def test_same_space_trials_inform_the_sampler_but_are_not_this_experiments(
    store: LocalStore, dask_client: Client
) -> None:
    finished(store)
    spec = load_spec(tiny_spec(warm_start={"experiment": EARLIER}, sampling_algorithm={"type": "tpe", "seed": 1}))
    driver = HpoDriver(spec, new(store, spec, "exp-warm-same"), store, dask_client, trial_fn=scripted_trial,
                       warm_start=seed_of(store, spec))  # fmt: skip
    driver.run()
    assert len(store.list_trials("exp-warm-same")) == 3
    told = [t for t in driver.study.get_trials() if t.state is optuna.trial.TrialState.COMPLETE]
    assert len(told) == 3 + len(VALUES)
    assert sorted(t.value for t in told[:5]) == sorted(VALUES.values())


def test_changed_space_runs_the_best_configurations_first_and_a_restart_goes_on_from_them(
    store: LocalStore, dask_client: Client
) -> None:
    finished(store)
    document = tiny_spec(warm_start={"experiment": EARLIER, "best": 3}, limits={"max_total_trials": 3,
                         "max_concurrent_trials": 1})  # fmt: skip
    document["search_space"] = {**document["search_space"], "max_depth": {"type": "choice", "values": [4, 6, 8]}}
    spec = load_spec(document)
    seed = seed_of(store, spec)
    best = [trial_params(n) for n in (3, 1, 2)]
    # a first driver ran the best configuration, then stopped: the restarted one runs the next two
    experiment_id = new(store, spec, "exp-warm-changed")
    store.put_trial(
        TrialRecord(
            experiment_id=experiment_id,
            number=0,
            params={**best[0], "n_bins": 32, "min_samples_leaf": 1},
            sampler_params=best[0],
            state=TrialState.COMPLETED,
            value=0.9,
        )
    )
    HpoDriver(spec, experiment_id, store, dask_client, trial_fn=scripted_trial, warm_start=seed).run()
    ran = [t.sampler_params for t in sorted(store.list_trials(experiment_id), key=lambda t: t.number)]
    assert ran == best


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**31), kind=st.sampled_from(["choice", "uniform", "loguniform", "normal", "lognormal"]))
def test_a_value_any_distribution_produced_maps_back_to_the_same_value(seed: int, kind: str) -> None:
    space = {
        "choice": {"type": "choice", "values": [0.2, 0.5, 0.9]},
        "uniform": {"type": "uniform", "min_value": 0.2, "max_value": 0.9},
        "loguniform": {"type": "loguniform", "min_value": -3.0, "max_value": -0.1},
        "normal": {"type": "normal", "mu": 2.0, "sigma": 1.0},
        "lognormal": {"type": "lognormal", "mu": -0.5, "sigma": 0.2},
    }[kind]
    spec = load_spec(tiny_spec(trial={"model": "xgboost"}, search_space={"alpha": space}))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    drawn = suggest_params(study.ask(), spec)["alpha"]
    mapped = optuna_params(spec, {"alpha": drawn})
    if drawn == 0.0:
        return  # a normal draw clipped at alpha's lower bound: no draw gives exactly 0 back
    assert mapped, (kind, drawn)
    again = suggest_params(optuna.trial.FixedTrial(mapped), spec)["alpha"]
    assert again == pytest.approx(drawn, rel=1e-9)


def test_warm_trials_are_bounded_records() -> None:
    with pytest.raises(ValueError):
        WarmStartSeed(experiment="e", same_space=True, goal="maximize",
                      trials=[WarmTrial(number=i, params={}, value=0.5) for i in range(101)])  # fmt: skip
    with pytest.raises(ValueError):
        WarmTrial(number=0, params={}, value=float("nan"))
