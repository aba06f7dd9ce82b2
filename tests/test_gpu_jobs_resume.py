"""run_trial resumes a retried trial: the folds an interrupted attempt finished are taken, not trained."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gpu_jobs import trial as trial_module
from gpu_jobs.cross_validation import FoldRecord
from gpu_jobs.data import FLIGHTS_TARGET, FLIGHTS_URI
from gpu_jobs.train import run_trial

SMALL_FOREST = {"n_estimators": 12, "max_depth": 6, "max_features": 0.6}
SMALL_BOOSTER = {"num_boost_round": 12, "max_depth": 4, "learning_rate": 0.3}
SAMPLE: dict[str, Any] = {"data": FLIGHTS_URI, "target": FLIGHTS_TARGET, "max_rows": 3000, "n_jobs": 1}
MEANS = ("accuracy", "roc_auc", "log_loss")


@pytest.fixture
def fits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the library fits (the trainers' own ``fit``), wrapped around the real trainer."""
    counted: list[int] = []
    original = trial_module.make_trainer

    def counting_make_trainer(*args: Any, **kwargs: Any) -> Any:
        trainer = original(*args, **kwargs)
        fit = trainer.fit
        trainer.fit = lambda *a: (counted.append(1), fit(*a))  # type: ignore[method-assign]
        return trainer

    monkeypatch.setattr(trial_module, "make_trainer", counting_make_trainer)
    return counted


def run(model: str, params: dict[str, Any], **kw: Any) -> tuple[dict[str, Any], list[tuple[int, dict, FoldRecord]]]:
    calls: list[tuple[int, dict, FoldRecord]] = []
    metrics = run_trial(model=model, params=params, on_fold=lambda s, r, f: calls.append((s, r, f)), **SAMPLE, **kw)
    return metrics, calls


@pytest.mark.parametrize(("model", "params"), [("random_forest", SMALL_FOREST), ("xgboost", SMALL_BOOSTER)])
def test_a_trial_given_its_first_folds_trains_only_the_rest_and_ends_as_a_full_run(
    model: str, params: dict[str, Any], fits: list[int]
) -> None:
    full, full_calls = run(model, params, cv_folds=4, seed=3)
    assert len(fits) == 4 and full["resumed_folds"] == 0
    # What the store gives back after a crash: the first two folds' records, through JSON.
    completed = json.loads(json.dumps([fold for _, _, fold in full_calls[:2]]))
    fits.clear()
    resumed, resumed_calls = run(model, params, cv_folds=4, seed=3, completed_folds=completed)
    assert len(fits) == 2 and resumed["resumed_folds"] == 2  # folds 3 and 4 only
    assert [step for step, _, _ in resumed_calls] == [3, 4]
    assert [running for _, running, _ in resumed_calls] == [running for _, running, _ in full_calls[2:]]
    assert [fold["scores"] for _, _, fold in resumed_calls] == [fold["scores"] for _, _, fold in full_calls[2:]]
    for name in MEANS:  # exactly the uninterrupted run's numbers, not approximately
        assert resumed[name] == full[name]
    assert resumed["fold_scores"] == full["fold_scores"]
    trained_here = sum(fold["fit_seconds"] for _, _, fold in resumed_calls)
    assert resumed["fit_seconds"] == pytest.approx(trained_here)  # only this run's fits are timed


def test_folds_of_another_split_are_trained_again(fits: list[int]) -> None:
    _, calls = run("xgboost", SMALL_BOOSTER, cv_folds=4, seed=3)
    completed = [fold for _, _, fold in calls[:3]]
    fits.clear()
    other_seed, other_calls = run("xgboost", SMALL_BOOSTER, cv_folds=4, seed=4, completed_folds=completed)
    assert other_seed["resumed_folds"] == 0 and len(fits) == 4 and [s for s, _, _ in other_calls] == [1, 2, 3, 4]
    fits.clear()
    fewer_folds, _ = run("xgboost", SMALL_BOOSTER, cv_folds=3, seed=3, completed_folds=completed)
    assert fewer_folds["resumed_folds"] == 0 and len(fits) == 3


def test_only_a_leading_run_of_sound_folds_is_taken(fits: list[int]) -> None:
    full, calls = run("xgboost", SMALL_BOOSTER, cv_folds=4, seed=3)
    folds = [dict(fold) for _, _, fold in calls]
    broken = {**folds[1], "scores": {"accuracy": folds[1]["scores"]["accuracy"]}}  # metrics missing
    fits.clear()
    resumed, resumed_calls = run(
        "xgboost", SMALL_BOOSTER, cv_folds=4, seed=3, completed_folds=[folds[0], broken, *folds[2:]]
    )
    assert resumed["resumed_folds"] == 1 and len(fits) == 3  # fold 2 is trained, and so are 3 and 4
    assert [s for s, _, _ in resumed_calls] == [2, 3, 4] and resumed["accuracy"] == full["accuracy"]
    fits.clear()
    nan_fold = {**folds[0], "scores": {**folds[0]["scores"], "roc_auc": float("nan")}}
    resumed, _ = run("xgboost", SMALL_BOOSTER, cv_folds=4, seed=3, completed_folds=[nan_fold, *folds[1:]])
    assert resumed["resumed_folds"] == 0 and len(fits) == 4


def test_a_trial_whose_folds_are_all_given_trains_none(fits: list[int]) -> None:
    full, calls = run("random_forest", SMALL_FOREST, cv_folds=3, seed=5)
    fits.clear()
    resumed, resumed_calls = run(
        "random_forest", SMALL_FOREST, cv_folds=3, seed=5, completed_folds=[f for _, _, f in calls]
    )
    assert fits == [] and resumed_calls == [] and resumed["resumed_folds"] == 3
    assert resumed["accuracy"] == full["accuracy"] and resumed["fit_seconds"] == 0.0


def test_a_resumed_trial_logs_the_full_curve_to_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    _, calls = run("xgboost", SMALL_BOOSTER, cv_folds=3, seed=3)
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    run("xgboost", SMALL_BOOSTER, cv_folds=3, seed=3, completed_folds=[fold for _, _, fold in calls[:2]])
    client = MlflowClient(uri)
    (logged,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    history = client.get_metric_history(logged.info.run_id, "accuracy")
    assert [(p.step, p.value) for p in history] == [(step, running["accuracy"]) for step, running, _ in calls]
