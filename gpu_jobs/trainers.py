"""The two models on either engine: a random forest (scikit-learn or cuML) and XGBoost (CPU or CUDA).

A trainer fits on engine arrays, predicts positive-class probabilities, and hands out a *portable* model
(a scikit-learn forest or an ``xgboost.Booster``) that loads and predicts on a machine without a GPU.
Random forests take no NaN: callers pass features through :func:`model_features` once per data set
(outside any timed region); XGBoost keeps NaN as "missing".
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from gpu_jobs.engine import Engine

FOREST_MISSING_VALUE = -1.0e30
"""Random forests see NaN features as this value on both engines (cuML's forest takes no NaN)."""


class Trainer(Protocol):
    """Fits one model on engine arrays and predicts positive-class probabilities."""

    def fit(self, features: Any, labels: Any) -> None: ...

    def predict_positive(self, features: Any) -> Any: ...

    def portable(self) -> Any:
        """The fitted model as a scikit-learn forest or an ``xgboost.Booster`` (loads without a GPU)."""
        ...


def model_features(model: str, engine: Engine, features: Any, *, has_missing: bool) -> Any:
    """``features`` as ``model`` takes them: forests get NaN replaced by :data:`FOREST_MISSING_VALUE`
    (a new array; only when ``has_missing``, known from loading), XGBoost gets them unchanged."""
    if model != "random_forest" or not has_missing:
        return features
    xp = engine.array
    return xp.where(xp.isnan(features), xp.float32(FOREST_MISSING_VALUE), features)


class RandomForestTrainer:
    """scikit-learn's forest on CPU, cuML's on GPU (built by the engine). Features must hold no NaN."""

    def __init__(self, engine: Engine, params: Mapping[str, float], *, seed: int, n_jobs: int | None) -> None:
        self.engine = engine
        self.params = params
        self.seed = seed
        self.n_jobs = n_jobs
        self.forest: Any = None

    def fit(self, features: Any, labels: Any) -> None:
        self.forest = self.engine.random_forest(self.params, seed=self.seed, n_jobs=self.n_jobs)
        self.forest.fit(features, labels)

    def predict_positive(self, features: Any) -> Any:
        return self.engine.array.asarray(self.forest.predict_proba(features))[:, 1]

    def portable(self) -> Any:
        return self.engine.portable_forest(self.forest)


def xgboost_params(params: Mapping[str, float], *, device: str, seed: int, n_jobs: int | None) -> dict[str, Any]:
    """XGBoost booster parameters from validated hyperparameters (``num_boost_round`` is separate)."""
    booster: dict[str, Any] = {
        "objective": "binary:logistic",
        "eval_metric": "logloss",
        "tree_method": "hist",
        "device": device,
        "eta": float(params["learning_rate"]),
        "max_depth": int(params["max_depth"]),
        "subsample": float(params["subsample"]),
        "colsample_bytree": float(params["colsample_bytree"]),
        "gamma": float(params["gamma"]),
        "lambda": float(params["lambda"]),
        "alpha": float(params["alpha"]),
        "min_child_weight": float(params["min_child_weight"]),
        "max_bin": int(params["max_bin"]),
        "seed": seed,
        "verbosity": 1,
    }
    if n_jobs is not None:
        booster["nthread"] = n_jobs
    return booster


@contextlib.contextmanager
def xgboost_config(engine: Engine) -> Iterator[None]:
    """XGBoost's global settings for ``engine`` (RMM allocations where the engine routes memory through
    RMM), for the calls inside the block only."""
    import xgboost

    with xgboost.config_context(**engine.xgboost_config):
        yield


class XGBoostTrainer:
    """``xgboost.train`` with the hist method, on ``cuda`` or ``cpu`` as the engine says."""

    def __init__(self, engine: Engine, params: Mapping[str, float], *, seed: int, n_jobs: int | None) -> None:
        self.engine = engine
        self.params = params
        self.seed = seed
        self.n_jobs = n_jobs
        self.booster_params = xgboost_params(params, device=engine.xgboost_device, seed=seed, n_jobs=n_jobs)
        self.booster: Any = None

    def fit(self, features: Any, labels: Any) -> None:
        """Train; with ``early_stopping_rounds`` a seeded tenth of the rows is held out to stop on, and the
        booster keeps the rounds up to the best one (so every later prediction and the saved model use it)."""
        import xgboost

        rounds = int(self.params.get("early_stopping_rounds", 0))
        with xgboost_config(self.engine):
            evals: list[tuple[Any, str]] = []
            if rounds:
                fit_rows, held_out = early_stopping_rows(self.engine, len(labels), self.seed)
                features, labels, held_features, held_labels = (
                    features[fit_rows], labels[fit_rows], features[held_out], labels[held_out]
                )  # fmt: skip
            matrix = xgboost.QuantileDMatrix(
                features, label=labels, max_bin=int(self.params["max_bin"]), nthread=self.n_jobs
            )
            if rounds:
                evals = [(xgboost.QuantileDMatrix(held_features, label=held_labels, ref=matrix), "held_out")]
            self.booster = xgboost.train(
                self.booster_params,
                matrix,
                num_boost_round=int(self.params["num_boost_round"]),
                evals=evals,
                early_stopping_rounds=rounds or None,
                verbose_eval=False,
            )
            if rounds and self.booster.best_iteration + 1 < self.booster.num_boosted_rounds():
                self.booster = self.booster[: self.booster.best_iteration + 1]

    def predict_positive(self, features: Any) -> Any:
        with xgboost_config(self.engine):
            return self.engine.array.asarray(self.booster.inplace_predict(features))

    def portable(self) -> Any:
        return portable_booster(self.booster)


EARLY_STOPPING_FRACTION = 0.1


def early_stopping_rows(engine: Engine, rows: int, seed: int) -> tuple[Any, Any]:
    """Engine index arrays of the rows to fit on and the held-out tenth to stop on: drawn on the host with
    ``seed``, so both engines hold out the same rows."""
    import numpy as np

    order = np.random.default_rng(seed).permutation(rows)
    held = max(1, int(rows * EARLY_STOPPING_FRACTION))
    return engine.array.asarray(np.sort(order[held:])), engine.array.asarray(np.sort(order[:held]))


def portable_booster(booster: Any) -> Any:
    """A copy of ``booster`` that predicts on the CPU (a GPU-trained booster otherwise asks for CUDA)."""
    copy = booster.copy()
    copy.set_param({"device": "cpu"})
    copy.feature_names = None  # predictions come from plain arrays (see model_files.load_model)
    return copy


def make_trainer(model: str, engine: Engine, params: Mapping[str, float], *, seed: int, n_jobs: int | None) -> Trainer:
    """A fresh, unfitted trainer for ``model`` on ``engine``."""
    trainers: dict[str, type[RandomForestTrainer] | type[XGBoostTrainer]] = {
        "random_forest": RandomForestTrainer,
        "xgboost": XGBoostTrainer,
    }
    return trainers[model](engine, params, seed=seed, n_jobs=n_jobs)
