"""The two models on either engine, for each task: a random forest (scikit-learn or cuML, a classifier or
a regressor) and XGBoost (CPU or CUDA; ``binary:logistic``, ``multi:softprob`` or ``reg:squarederror``).

A trainer fits on engine arrays, predicts what :func:`gpu_jobs.metrics.score` takes (the positive class's
probability, one probability column per class, or values), and hands out a *portable* model (a
scikit-learn forest or an ``xgboost.Booster``) that loads and predicts on a machine without a GPU.
Random forests take no NaN: callers pass features through :func:`model_features` once per data set
(outside any timed region); XGBoost keeps NaN as "missing".
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from gpu_jobs.engine import Engine
from gpu_jobs.metrics import Task

FOREST_MISSING_VALUE = -1.0e30
"""Random forests see NaN features as this value on both engines (cuML's forest takes no NaN)."""


class Trainer(Protocol):
    """Fits one model on engine arrays and predicts what the task's metrics take."""

    def fit(self, features: Any, labels: Any) -> None: ...

    def predict(self, features: Any) -> Any:
        """Binary: the positive class's probability ``(n,)``; multiclass: ``(n, K)`` probabilities;
        regression: the predicted values ``(n,)``. An engine array."""
        ...

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


class _Configured:
    """What every trainer is built from: the engine, validated hyperparameters, the seed, the thread count
    and the task (with its number of classes)."""

    def __init__(
        self,
        engine: Engine,
        params: Mapping[str, float],
        *,
        seed: int,
        n_jobs: int | None,
        task: Task = "binary",
        n_classes: int = 2,
    ) -> None:
        self.engine = engine
        self.params = params
        self.seed = seed
        self.n_jobs = n_jobs
        self.task = task
        self.n_classes = n_classes


def refit_on_share(trainer: RandomForestTrainer | XGBoostTrainer, features: Any, labels: Any, percent: int) -> None:
    """Fit ``trainer`` anew, with its whole budget, on ``percent`` percent of the rows (a seeded, nested
    sample: :func:`gpu_jobs.steps.fraction_rows`): one step of the ``percent`` unit."""
    from gpu_jobs.steps import fraction_rows

    rows = fraction_rows(trainer.engine, trainer.engine.array.arange(len(labels)), percent, trainer.seed)
    trainer.fit(features[rows], labels[rows])


class RandomForestTrainer(_Configured):
    """scikit-learn's forest on CPU, cuML's on GPU (built by the engine). Features must hold no NaN.

    Grown in steps (:mod:`gpu_jobs.steps`): by trees where the engine's forest takes more
    (``warm_start``: the trees a one-shot fit grows), else refit on a growing, nested share of the rows."""

    forest: Any = None
    _rows: tuple[Any, Any] | None = None
    _unit: str = "tree"

    def fit(self, features: Any, labels: Any) -> None:
        self.forest = self.engine.random_forest(self.params, seed=self.seed, n_jobs=self.n_jobs, task=self.task)
        self.forest.fit(features, labels)

    def start(self, features: Any, labels: Any, unit: str) -> None:
        self._rows, self._unit = (features, labels), unit
        if unit == "tree":
            self.forest = self.engine.random_forest(self.params, seed=self.seed, n_jobs=self.n_jobs, task=self.task)
            self.forest.set_params(warm_start=True)

    def grow(self, step: int) -> bool:
        assert self._rows is not None, "start() first"
        features, labels = self._rows
        if self._unit == "tree":
            self.forest.set_params(n_estimators=step)
            self.forest.fit(features, labels)
        else:
            refit_on_share(self, features, labels, step)
        return True

    def finish(self) -> None:
        if self._unit == "tree":
            self.forest.set_params(warm_start=False)
        self._rows = None

    def predict(self, features: Any) -> Any:
        return forest_prediction(self.engine.array, self.forest, features, self.task, self.n_classes)

    def portable(self) -> Any:
        return self.engine.portable_forest(self.forest)


def forest_prediction(xp: Any, forest: Any, features: Any, task: Task, n_classes: int) -> Any:
    """What a fitted forest predicts for ``task`` (see :meth:`Trainer.predict`), as an array of ``xp``.
    A class the forest never saw in training gets probability 0 in its column."""
    if task == "regression":
        return xp.asarray(forest.predict(features), dtype=xp.float64).reshape(-1)
    proba = xp.asarray(forest.predict_proba(features), dtype=xp.float64)
    seen = getattr(forest, "classes_", None)
    if proba.shape[1] != n_classes and seen is not None:  # trained on a subset of the classes
        full = xp.zeros((proba.shape[0], n_classes), dtype=xp.float64)
        full[:, xp.asarray(seen, dtype=xp.int64)] = proba
        proba = full
    return proba[:, 1] if task == "binary" else proba


XGBOOST_OBJECTIVES: dict[Task, tuple[str, str]] = {
    "binary": ("binary:logistic", "logloss"),
    "multiclass": ("multi:softprob", "mlogloss"),
    "regression": ("reg:squarederror", "rmse"),
}
"""XGBoost's objective and evaluation metric per task."""


def xgboost_params(
    params: Mapping[str, float],
    *,
    device: str,
    seed: int,
    n_jobs: int | None,
    task: Task = "binary",
    n_classes: int = 2,
) -> dict[str, Any]:
    """XGBoost booster parameters from validated hyperparameters (``num_boost_round`` is separate)."""
    objective, eval_metric = XGBOOST_OBJECTIVES[task]
    booster: dict[str, Any] = {
        "objective": objective,
        "eval_metric": eval_metric,
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
        # Reseed XGBoost's random engine (one per thread, shared by every booster) from (seed, round) at
        # each round: a fold's subsampling then does not depend on other boosters trained meanwhile in the
        # thread (the folds of a trial in lockstep, gpu_jobs/steps.py; trials sharing a worker thread).
        "seed_per_iteration": True,
        "verbosity": 1,
    }
    if n_jobs is not None:
        booster["nthread"] = n_jobs
    if task == "multiclass":
        booster["num_class"] = n_classes
    return booster


@contextlib.contextmanager
def xgboost_config(engine: Engine) -> Iterator[None]:
    """XGBoost's global settings for ``engine`` (RMM allocations where the engine routes memory through
    RMM), for the calls inside the block only."""
    import xgboost

    with xgboost.config_context(**engine.xgboost_config):
        yield


class XGBoostTrainer(_Configured):
    """``xgboost.train`` with the hist method, on ``cuda`` or ``cpu`` as the engine says."""

    booster: Any = None
    run: BoostingRun
    _share: tuple[Any, Any] | None = None
    """The rows a ``percent`` step refits on (``start`` with that unit); None: boosting by rounds."""

    @property
    def booster_params(self) -> dict[str, Any]:
        return xgboost_params(
            self.params,
            device=self.engine.xgboost_device,
            seed=self.seed,
            n_jobs=self.n_jobs,
            task=self.task,
            n_classes=self.n_classes,
        )

    def fit(self, features: Any, labels: Any) -> None:
        """Train; with ``early_stopping_rounds`` a seeded tenth of the rows is held out to stop on, and the
        booster keeps the rounds up to the best one (so every later prediction and the saved model use it)."""
        self._begin(features, labels)
        with xgboost_config(self.engine):
            self.run.advance(int(self.params["num_boost_round"]))
        self._end()

    def start(self, features: Any, labels: Any, unit: str = "round") -> None:
        """By rounds: build the matrices and an untrained booster (:class:`BoostingRun`), ``grow`` boosts.
        By ``percent``: keep the rows, each ``grow`` refits on a share of them (``trial.fidelity: rows``)."""
        self._share = (features, labels) if unit == "percent" else None
        if self._share is None:
            self._begin(features, labels)

    def _begin(self, features: Any, labels: Any) -> None:
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
            self.run = BoostingRun(
                self.booster_params, matrix, evals, int(self.params["num_boost_round"]), early_stopping_rounds=rounds
            )
            self.booster = self.run.booster

    def grow(self, step: int) -> bool:
        """Boost up to ``step`` rounds in all (False when early stopping had already ended training); by
        ``percent``, train every round anew on ``step`` percent of the rows."""
        if self._share is not None:
            refit_on_share(self, *self._share, step)
            return True
        with xgboost_config(self.engine):
            return self.run.advance(step) > 0

    def finish(self) -> None:
        """End training as ``xgboost.train`` does, keeping the rounds up to the best (early stopping)."""
        if self._share is None:
            self._end()
        self._share = None  # by percent the last step's fit ended itself

    def _end(self) -> None:
        with xgboost_config(self.engine):
            booster = self.run.finish()
        if self.run.early_stopping and booster.best_iteration + 1 < booster.num_boosted_rounds():
            booster = booster[: booster.best_iteration + 1]
        self.booster = booster

    def predict(self, features: Any) -> Any:
        with xgboost_config(self.engine):
            return self.engine.array.asarray(self.booster.inplace_predict(features))

    def portable(self) -> Any:
        return portable_booster(self.booster)


class BoostingRun:
    """``xgboost.train``'s own loop (a ``Booster`` over the training and eval matrices, its
    ``CallbackContainer`` with the ``EarlyStopping`` callback, ``update`` once per round), advanced a few
    rounds at a time so the folds of a trial can boost in lockstep (:mod:`gpu_jobs.steps`). Run to the end
    at once it is ``xgboost.train`` (``tests/test_gpu_jobs_steps.py`` compares the boosters)."""

    def __init__(
        self,
        params: Mapping[str, Any],
        matrix: Any,
        evals: list[tuple[Any, str]],
        num_boost_round: int,
        *,
        early_stopping_rounds: int = 0,
    ) -> None:
        import xgboost
        from xgboost.callback import CallbackContainer, EarlyStopping

        self.matrix, self.evals, self.total = matrix, evals, num_boost_round
        self.early_stopping = early_stopping_rounds > 0
        callbacks = [EarlyStopping(rounds=early_stopping_rounds)] if self.early_stopping else []
        self.callbacks = CallbackContainer(callbacks, metric=None, output_margin=False)
        self.booster = self.callbacks.before_training(xgboost.Booster(dict(params), [matrix] + [d for d, _ in evals]))
        self.rounds = 0
        self.stopped = False

    def advance(self, upto: int) -> int:
        """Boost up to ``upto`` rounds in all (at most ``num_boost_round``); the rounds added now."""
        added = 0
        while not self.stopped and self.rounds < min(upto, self.total):
            if self.callbacks.before_iteration(self.booster, self.rounds, self.matrix, self.evals):
                self.stopped = True
                break
            self.booster.update(self.matrix, iteration=self.rounds)
            self.rounds += 1
            added += 1
            if self.callbacks.after_iteration(self.booster, self.rounds - 1, self.matrix, self.evals):
                self.stopped = True
        return added

    def finish(self) -> Any:
        """The trained booster, its training caches released (as ``xgboost.train`` returns it)."""
        self.booster = self.callbacks.after_training(self.booster).reset()
        return self.booster


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


def model_megabytes(trainer: Trainer) -> float:
    """The size of ``trainer``'s portable model as it is saved (XGBoost's UBJSON, a forest's pickle), in MB."""
    import pickle

    model = trainer.portable()
    data = model.save_raw("ubj") if hasattr(model, "save_raw") else pickle.dumps(model, protocol=5)
    return len(data) / 1e6


def make_trainer(
    model: str,
    engine: Engine,
    params: Mapping[str, float],
    *,
    seed: int,
    n_jobs: int | None,
    task: Task = "binary",
    n_classes: int = 2,
) -> Trainer:
    """A fresh, unfitted trainer for ``model`` on ``engine`` for ``task`` (``n_classes`` classes)."""
    trainers: dict[str, type[RandomForestTrainer] | type[XGBoostTrainer]] = {
        "random_forest": RandomForestTrainer,
        "xgboost": XGBoostTrainer,
    }
    return trainers[model](engine, params, seed=seed, n_jobs=n_jobs, task=task, n_classes=n_classes)
