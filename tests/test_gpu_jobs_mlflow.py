"""The saved model's MLflow form: round trips of both model kinds through ``mlflow.pyfunc`` in a process
that sees no GPU, its signature and metadata, NaN handling, and the scikit-learn version check on load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from gpu_jobs.data import FLIGHTS_TARGET, FLIGHTS_URI, load_dataset
from gpu_jobs.errors import UserError
from gpu_jobs.model_files import FEATURES_FILE, MLFLOW_DIR, load_model
from gpu_jobs.train import fit_final_model, run_trial

ROOT = Path(__file__).resolve().parents[1]
FLIGHTS: dict[str, Any] = {"data": FLIGHTS_URI, "target": FLIGHTS_TARGET, "max_rows": 2000, "n_jobs": 1}
MODELS = [
    ("random_forest", {"n_estimators": 12, "max_depth": 6}, "sklearn"),
    ("xgboost", {"num_boost_round": 12, "max_depth": 4}, "xgboost"),
]

PYFUNC_SCRIPT = """
import json, sys
import mlflow.pyfunc, pandas as pd
frame = pd.read_json(sys.argv[2], orient="split").astype("float32")
model = mlflow.pyfunc.load_model(sys.argv[1])
print(json.dumps({"predictions": model.predict(frame).tolist(), "flavors": sorted(model.metadata.flavors)}))
"""


def pyfunc_in_a_cpu_process(model_dir: Path, frame: pd.DataFrame, tmp_path: Path) -> dict[str, object]:
    """``mlflow.pyfunc.load_model(...).predict(frame)`` in a fresh process that can see no GPU."""
    rows = tmp_path / "rows.json"
    rows.write_text(frame.to_json(orient="split"))
    result = subprocess.run(
        [sys.executable, "-c", PYFUNC_SCRIPT, str(model_dir), str(rows)],
        cwd=tmp_path,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(("model", "params", "flavor"), MODELS)
@pytest.mark.slow  # a few seconds on its own: the default run stays under 5 minutes (CI runs every test)
def test_mlflow_round_trip_of_the_refit_model(tmp_path: Path, model: str, params: dict, flavor: str) -> None:
    output = tmp_path / "out"
    metrics = fit_final_model(model=model, params=params, output=output, seed=2, **FLIGHTS)
    assert metrics["mlflow_model"] == str(output / MLFLOW_DIR)
    described = yaml.safe_load((output / MLFLOW_DIR / "MLmodel").read_text())
    assert flavor in described["flavors"] and "python_function" in described["flavors"]
    assert described["signature"]["inputs"] is None and described["signature"]["outputs"]  # inputs: any numeric
    saved = load_model(output)
    assert described["metadata"]["inputs"] == list(saved.encoding.feature_names)
    assert described["metadata"]["params"] == metrics["params"]
    assert described["metadata"]["metrics"]["rows"] == 2000
    assert described["metadata"]["target_classes"] == [False, True]

    encoded = load_dataset(FLIGHTS_URI, FLIGHTS_TARGET, engine="cpu").X.head(300)
    answer = pyfunc_in_a_cpu_process(output / MLFLOW_DIR, encoded, tmp_path)
    predictions = np.asarray(answer["predictions"])
    expected = saved.predict_proba(encoded)
    if model == "random_forest":  # sklearn flavour: predict_proba, one column per class
        np.testing.assert_allclose(predictions, expected, rtol=1e-6)
    else:  # xgboost flavour: the positive class's probability
        np.testing.assert_allclose(predictions, expected[:, 1], rtol=1e-5)


def test_the_xgboost_model_asks_for_a_release_a_python_3_11_loader_can_install(tmp_path: Path) -> None:
    """The GPU image writes with XGBoost 3.4 (Python 3.12 and later only); Python 3.11 gets at most 3.2: the
    MLflow model asks for the writer's major, which both satisfy, never the writer's exact release."""
    from packaging.requirements import Requirement

    from gpu_jobs.mlflow_model import xgboost_requirement

    written = xgboost_requirement("3.4.1")
    assert written == "xgboost>=3.0,<4"
    assert Requirement(written).specifier.contains("3.2.0") and not Requirement(written).specifier.contains("4.0.0")
    fit_final_model(model="xgboost", params={"num_boost_round": 5}, output=tmp_path, seed=2, **FLIGHTS)
    requirements = (tmp_path / MLFLOW_DIR / "requirements.txt").read_text().split()
    (line,) = [line for line in requirements if line.startswith("xgboost")]
    assert Requirement(line) == Requirement(xgboost_requirement(xgboost_version()))


def xgboost_version() -> str:
    import xgboost

    return str(xgboost.__version__)


def test_mlflow_model_of_a_cross_validated_trial_and_its_metrics(tmp_path: Path) -> None:
    run_trial(model="random_forest", params={"n_estimators": 3}, cv_folds=2, output=tmp_path, **FLIGHTS)
    # a second trial into the same folder replaces the first one's MLflow model
    metrics = run_trial(model="xgboost", params={"num_boost_round": 5}, cv_folds=2, output=tmp_path, **FLIGHTS)
    described = yaml.safe_load((tmp_path / MLFLOW_DIR / "MLmodel").read_text())
    assert described["metadata"]["metrics"]["accuracy"] == pytest.approx(metrics["accuracy"])
    assert "xgboost" in described["flavors"] and "sklearn" not in described["flavors"]
    assert json.loads((tmp_path / "metrics.json").read_text())["mlflow_model"] == str(tmp_path / MLFLOW_DIR)


def test_forest_mlflow_model_treats_missing_values_as_in_training(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    signal = rng.normal(size=800)
    table = pd.DataFrame({"signal": signal, "noise": rng.normal(size=800), "label": signal > 0})
    table.loc[rng.choice(800, 200, replace=False), "signal"] = np.nan
    table.to_parquet(tmp_path / "t.parquet")
    run_trial(
        data=str(tmp_path / "t.parquet"), target="label", model="random_forest",
        params={"n_estimators": 10, "max_depth": 5}, cv_folds=2, n_jobs=1, output=tmp_path / "out",
    )  # fmt: skip
    import mlflow.pyfunc

    features = table.drop(columns=["label"]).astype(np.float32)
    predictions = mlflow.pyfunc.load_model(str(tmp_path / "out" / MLFLOW_DIR)).predict(features)
    expected = load_model(tmp_path / "out").predict_proba(features)
    assert not np.isnan(predictions).any()
    np.testing.assert_allclose(predictions, expected, rtol=1e-6)


def test_xgboost_mlflow_model_with_names_xgboost_refuses(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    score = rng.normal(size=400)
    table = pd.DataFrame({"score[0]": score, "a<b": rng.normal(size=400), "label": score > 0})
    table.to_csv(tmp_path / "t.csv", index=False)
    fit_final_model(
        data=str(tmp_path / "t.csv"), target="label", model="xgboost", params={"num_boost_round": 5},
        n_jobs=1, output=tmp_path / "out",
    )  # fmt: skip
    import mlflow.pyfunc

    loaded = mlflow.pyfunc.load_model(str(tmp_path / "out" / MLFLOW_DIR))
    columns = loaded.metadata.metadata["inputs"]
    assert columns == ["score_0_", "a_b"]
    features = pd.DataFrame(table[["score[0]", "a<b"]].to_numpy(np.float32), columns=columns)
    expected = load_model(tmp_path / "out").predict_proba(table.drop(columns=["label"]))[:, 1]
    np.testing.assert_allclose(loaded.predict(features), expected, rtol=1e-5)


def test_a_forest_from_another_scikit_learn_minor_is_refused_clearly(tmp_path: Path) -> None:
    fit_final_model(model="random_forest", params={"n_estimators": 3}, output=tmp_path, **FLIGHTS)
    described = json.loads((tmp_path / FEATURES_FILE).read_text())
    described["scikit_learn_version"] = "1.4.2"
    (tmp_path / FEATURES_FILE).write_text(json.dumps(described))
    with pytest.raises(UserError, match=r"saved by scikit-learn 1\.4\.2.*install scikit-learn==1\.4\.\*"):
        load_model(tmp_path)


@pytest.mark.slow
def test_the_driver_refit_stores_the_mlflow_model_under_model(tmp_path: Path) -> None:
    """The HPO driver with the real ``run_trial`` and refit (the CPU twin of the GPU module's driver test):
    the store gets ``model/mlflow/`` beside ``model/model.json``, which the API's model zip serves."""
    from distributed import Client, LocalCluster

    from shared.hpo.driver import HpoDriver
    from shared.hpo.refit import refit_best_model
    from shared.records import ExperimentRecord
    from shared.spec import load_spec
    from shared.store.local import LocalStore

    spec = load_spec(
        {
            "name": "mlflow-driver",
            "dataset": {"uri": FLIGHTS_URI, "target": FLIGHTS_TARGET, "max_rows": 2000},
            "trial": {"model": "xgboost", "cv_folds": 2, "engine": "cpu"},
            "search_space": {"max_depth": {"type": "choice", "values": [2, 4]}},
            "sampling_algorithm": {"type": "random", "seed": 1},
            "limits": {"max_total_trials": 2, "max_concurrent_trials": 1},
            "objective": {"primary_metric": "roc_auc", "goal": "maximize"},
        }
    )
    store = LocalStore(tmp_path / "store")
    store.create_experiment(ExperimentRecord(id="exp-mlflow", name=spec.name, spec=spec.to_document()))
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        outcome = HpoDriver(spec, "exp-mlflow", store, client).run()
        assert outcome.status == "COMPLETED" and outcome.best is not None
        refit_best_model(spec, "exp-mlflow", outcome.best, store, client)
    names = store.list_artifacts("exp-mlflow", "model/")
    assert "model/model.json" in names and "model/mlflow/MLmodel" in names
    folder = tmp_path / "downloaded"
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(store.get_artifact("exp-mlflow", name))
    encoded = load_dataset(FLIGHTS_URI, FLIGHTS_TARGET, engine="cpu").X.head(50)
    answer = pyfunc_in_a_cpu_process(folder / "model" / MLFLOW_DIR, encoded, tmp_path)
    expected = load_model(folder / "model").predict_proba(encoded)[:, 1]
    np.testing.assert_allclose(answer["predictions"], expected, rtol=1e-5)


@pytest.mark.parametrize(("model", "params", "flavor"), MODELS)
def test_mlflow_model_takes_the_frame_read_from_its_own_training_csv(
    tmp_path: Path, model: str, params: dict, flavor: str
) -> None:
    """pandas reads a CSV of decimals as float64: the model trained on that CSV takes that frame as read,
    and predicts what it predicts for the same values as float32 (how training saw them)."""
    import mlflow.pyfunc
    from sklearn.datasets import load_breast_cancer

    table = load_breast_cancer(as_frame=True).frame
    csv = tmp_path / "breast_cancer.csv"
    table.to_csv(csv, index=False)
    run_trial(data=str(csv), target="target", model=model, params=params, cv_folds=2, n_jobs=1, output=tmp_path / "o")
    read = pd.read_csv(csv).drop(columns=["target"])
    assert set(read.dtypes.astype(str)) == {"float64"}
    pyfunc = mlflow.pyfunc.load_model(str(tmp_path / "o" / MLFLOW_DIR))
    as_read = np.asarray(pyfunc.predict(read))
    as_float32 = np.asarray(pyfunc.predict(read.astype(np.float32)))
    np.testing.assert_allclose(as_read, as_float32, rtol=1e-6)
    expected = load_model(tmp_path / "o").predict_proba(read)
    np.testing.assert_allclose(as_read, expected if flavor == "sklearn" else expected[:, 1], rtol=1e-5)


@pytest.mark.parametrize(("model", "params", "flavor"), MODELS)
def test_mlflow_model_takes_whole_number_columns_as_read_and_still_checks_the_columns(
    tmp_path: Path, model: str, params: dict, flavor: str
) -> None:
    """A CSV of whole numbers reads as int64 (and as float64 where a value is missing): the model takes
    either as read, predicting what it predicts for the same values as float64; a frame with a column
    renamed, missing or out of order is refused by the model itself, naming the feature names."""
    import mlflow.pyfunc

    rng = np.random.default_rng(5)
    table = pd.DataFrame({"age": rng.integers(18, 90, 300), "visits": rng.integers(0, 40, 300)})
    table["score"] = rng.normal(size=300).round(3)
    table["churned"] = (table["visits"] + rng.integers(0, 10, 300) > 25).astype(int)
    csv = tmp_path / "people.csv"
    table.to_csv(csv, index=False)
    run_trial(data=str(csv), target="churned", model=model, params=params, cv_folds=2, n_jobs=1, output=tmp_path / "o")
    read = pd.read_csv(csv).drop(columns=["churned"])
    assert str(read.dtypes["age"]) == "int64" and str(read.dtypes["score"]) == "float64"
    pyfunc = mlflow.pyfunc.load_model(str(tmp_path / "o" / MLFLOW_DIR))
    as_read = np.asarray(pyfunc.predict(read))
    np.testing.assert_allclose(as_read, np.asarray(pyfunc.predict(read.astype("float64"))), rtol=1e-6)
    with_gap = read.astype({"age": "float64"})
    with_gap.loc[0, "age"] = np.nan  # how pandas reads a whole-number column with a missing value
    assert len(np.asarray(pyfunc.predict(with_gap))) == len(read)
    for wrong in (read.rename(columns={"age": "years"}), read[["visits", "age", "score"]], read.drop(columns="age")):
        with pytest.raises(Exception, match=r"(?i)feature"):
            pyfunc.predict(wrong)
