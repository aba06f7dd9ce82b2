"""The worker side of a distributed trial: each fold (and the refit) is one task on a worker.

The task drives the cluster through ``worker_client`` (it secedes from the worker's thread pool), so the
caller's process needs neither RAPIDS nor a GPU: cuDF partitions, ``cuml.dask`` and the conversion of a
cuML forest to scikit-learn all happen on CUDA workers. Partitions are placed on every worker
(:mod:`gpu_jobs.dask_placement`) before a model is fitted.

Models, per (model, engine):

* XGBoost: ``xgboost.dask`` on ``cuda`` or ``cpu``, with the task's objective;
* random forest, GPU: ``cuml.dask.ensemble.RandomForestClassifier`` or ``RandomForestRegressor``
  (``n_estimators`` split between the workers, each fitting on the rows it holds);
* random forest, CPU: the same split done here: one scikit-learn forest per worker on its rows, joined by
  concatenating ``estimators_`` (a classifier only from workers whose rows hold every class).

Scoring is one code path: each validation partition is predicted where it lives by the single-process
trainer holding the fitted model, and labels and predictions come back together, in partition order, to
be scored by :func:`gpu_jobs.metrics.score` in the calling process.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpu_jobs.dask_placement import Placed, place_partitions, publish, published
from gpu_jobs.dask_table import FOLD_COLUMN, LABEL_COLUMN
from gpu_jobs.engine import get_engine, with_tree_count
from gpu_jobs.errors import UserError
from gpu_jobs.metrics import Task
from gpu_jobs.trainers import (
    FOREST_MISSING_VALUE,
    RandomForestTrainer,
    XGBoostTrainer,
    portable_booster,
    xgboost_config,
)


@dataclass(frozen=True)
class DistributedJob:
    """What every fold task of one trial needs (small; shipped with each task)."""

    model: str
    engine: str
    params: Mapping[str, float | int]
    feature_columns: tuple[str, ...]
    seed: int
    n_jobs: int | None
    workers: tuple[str, ...]
    table: str
    """Name of the published dataset holding the placed, encoded table (see :func:`prepare_table`)."""
    task: Task = "binary"
    n_classes: int = 2

    @property
    def label_dtype(self) -> type[np.generic]:
        return np.float32 if self.task == "regression" else np.int32


@dataclass(frozen=True)
class FoldResult:
    labels: np.ndarray
    prediction: np.ndarray
    """What :meth:`gpu_jobs.trainers.Trainer.predict` gives for the task, for every validation row."""
    fit_seconds: float
    predict_seconds: float


def prepare_table(job: DistributedJob, source: str, *, fill_missing: bool) -> str:
    """Task: place the published pandas table ``source`` on every worker, on the job's engine (cuDF
    partitions for ``gpu``; NaN features replaced for forests when ``fill_missing``), and publish it as
    ``job.table``; returns that name."""
    from distributed import worker_client

    with worker_client() as client:
        frame = client.get_dataset(source)
        convert = _PartitionConverter(job.engine, job.feature_columns if fill_missing else ())
        placed = place_partitions(client, frame, job.workers, transform=convert, meta=convert(frame._meta))
        publish(client, job.table, placed)
    return job.table


class _PartitionConverter:
    """Picklable per-partition step: NaN features -> the forests' missing value, then to cuDF on ``gpu``."""

    def __init__(self, engine: str, fill_columns: Sequence[str]) -> None:
        self.engine = engine
        self.fill_columns = list(fill_columns)

    def __call__(self, part: Any) -> Any:
        if self.fill_columns:
            part = part.copy()
            part[self.fill_columns] = part[self.fill_columns].fillna(np.float32(FOREST_MISSING_VALUE))
        return get_engine(self.engine).from_pandas(part) if self.engine == "gpu" else part


def run_fold(job: DistributedJob, fold: int) -> FoldResult:
    """Task: fit on every fold but ``fold``, score ``fold``; returns host arrays and worker-side timings."""
    from distributed import worker_client

    with worker_client() as client:
        frame = published(client, job.table).collection
        train = frame[frame[FOLD_COLUMN] != fold]
        features = place_partitions(client, train[list(job.feature_columns)], job.workers)
        labels = place_partitions(client, train[LABEL_COLUMN], job.workers)
        _synchronize(client, job)
        tick = time.perf_counter()
        scorer = fit_on_cluster(client, job, features, labels)
        _synchronize(client, job)
        fitted = time.perf_counter()
        valid = place_partitions(client, frame[frame[FOLD_COLUMN] == fold], job.workers)
        true_labels, prediction = score_on_cluster(client, job, scorer, valid)
        predicted = time.perf_counter()
    return FoldResult(true_labels, prediction, fitted - tick, predicted - fitted)


def refit(job: DistributedJob) -> tuple[Any, float]:
    """Task: fit on all rows; returns the portable model (scikit-learn forest or CPU ``Booster``) and the
    fit's seconds. A cuML forest is converted here, on a CUDA worker."""
    from distributed import worker_client

    with worker_client() as client:
        frame = published(client, job.table).collection
        features = place_partitions(client, frame[list(job.feature_columns)], job.workers)
        labels = place_partitions(client, frame[LABEL_COLUMN], job.workers)
        _synchronize(client, job)
        tick = time.perf_counter()
        fitted = fit_on_cluster(client, job, features, labels)
        _synchronize(client, job)
        seconds = time.perf_counter() - tick
    if job.model == "xgboost":
        return portable_booster(fitted), seconds
    return get_engine(job.engine).portable_forest(fitted), seconds


def fit_on_cluster(client: Any, job: DistributedJob, features: Placed, labels: Placed) -> Any:
    """Fit ``job.model`` on the placed partitions; returns what scores on a worker of ``job.engine``:
    an ``xgboost.Booster``, a scikit-learn forest (CPU) or cuML's combined forest (GPU)."""
    if job.model == "xgboost":
        import xgboost.dask as dxgb

        engine = get_engine(job.engine)
        booster_params = XGBoostTrainer(
            engine, job.params, seed=job.seed, n_jobs=job.n_jobs, task=job.task, n_classes=job.n_classes
        ).booster_params
        with xgboost_config(engine):  # xgboost.dask hands the global config to its worker tasks
            matrix = dxgb.DaskQuantileDMatrix(
                client, features.collection, labels.collection, max_bin=int(job.params["max_bin"])
            )
            trained = dxgb.train(client, booster_params, matrix, num_boost_round=int(job.params["num_boost_round"]))
        return trained["booster"]
    if job.engine == "gpu":
        return _fit_cuml_forest(client, job, features, labels)
    return _fit_worker_forests(client, job, features, labels)


def _fit_cuml_forest(client: Any, job: DistributedJob, features: Placed, labels: Placed) -> Any:
    from cuml.dask.ensemble import RandomForestClassifier, RandomForestRegressor

    kind = RandomForestRegressor if job.task == "regression" else RandomForestClassifier
    forest = kind(
        client=client,
        workers=list(job.workers),
        n_estimators=int(job.params["n_estimators"]),
        max_depth=int(job.params["max_depth"]),
        max_features=float(job.params["max_features"]),
        n_bins=int(job.params["n_bins"]),
        min_samples_leaf=int(job.params["min_samples_leaf"]),
        random_state=job.seed,
        ignore_empty_partitions=True,  # a fold filter may empty a small partition
    )
    forest.fit(features.collection, labels.collection)
    return with_tree_count(forest.get_combined_model())


def tree_shares(n_estimators: int, n_workers: int) -> list[int]:
    """Trees per worker, as ``cuml.dask`` splits them (earlier workers take the remainder)."""
    if n_estimators < n_workers:
        raise UserError(
            f"random_forest n_estimators={n_estimators} is below the cluster's {n_workers} workers: each "
            f"worker fits at least one tree, so use n_estimators >= {n_workers}"
        )
    base, extra = divmod(n_estimators, n_workers)
    return [base + (1 if index < extra else 0) for index in range(n_workers)]


def _fit_worker_forests(client: Any, job: DistributedJob, features: Placed, labels: Placed) -> Any:
    shares = tree_shares(int(job.params["n_estimators"]), len(job.workers))
    seeds = np.random.SeedSequence(job.seed).generate_state(len(job.workers))
    owned_features, owned_labels = features.by_worker(), labels.by_worker()
    tasks = [
        client.submit(
            fit_worker_forest,
            owned_features[worker],
            owned_labels[worker],
            dict(job.params),
            share,
            int(seed),
            job.n_jobs,
            job.task,
            job.n_classes,
            workers=[worker],
            allow_other_workers=False,
            pure=False,
        )
        for worker, share, seed in zip(job.workers, shares, seeds, strict=True)
    ]
    return combine_forests(client.gather(tasks), n_jobs=job.n_jobs)


def fit_worker_forest(
    feature_parts: Sequence[Any],
    label_parts: Sequence[Any],
    params: Mapping[str, float],
    n_trees: int,
    seed: int,
    n_jobs: int | None,
    task: Task = "binary",
    n_classes: int = 2,
) -> Any:
    """Fit ``n_trees`` scikit-learn trees on one worker's partitions; None without rows there, or, for
    classes, without every class there (its trees' probability columns would not line up with the others')."""
    import pandas as pd

    dtype = np.float32 if task == "regression" else np.int32
    labels = np.concatenate([part.to_numpy(dtype=dtype) for part in label_parts]) if label_parts else None
    if labels is None or len(labels) == 0:
        return None
    if task != "regression" and len(np.unique(labels)) < n_classes:
        return None
    features = pd.concat(list(feature_parts)).to_numpy(dtype=np.float32)
    if n_jobs is None:
        from gpu_jobs.trial import dask_worker_threads

        n_jobs = dask_worker_threads()
    trainer = RandomForestTrainer(
        get_engine("cpu"), {**params, "n_estimators": n_trees}, seed=seed, n_jobs=n_jobs, task=task, n_classes=n_classes
    )
    trainer.fit(features, labels)
    return trainer.forest


def combine_forests(forests: Sequence[Any], *, n_jobs: int | None = None) -> Any:
    """One scikit-learn forest holding the trees of all ``forests`` (each fitted on every class)."""
    import copy

    usable = [forest for forest in forests if forest is not None]
    if not usable:
        raise UserError("no worker's rows hold every target class: cannot train a random forest")
    combined = copy.copy(usable[0])
    combined.estimators_ = [tree for forest in usable for tree in forest.estimators_]
    combined.n_jobs = n_jobs
    return with_tree_count(combined)


def score_on_cluster(client: Any, job: DistributedJob, scorer: Any, valid: Placed) -> tuple[np.ndarray, np.ndarray]:
    """Labels and predictions of every ``valid`` partition, predicted where it lives."""
    shared = client.scatter(scorer, broadcast=True, hash=False)
    tasks = [
        client.submit(
            score_partition,
            part,
            shared,
            job,
            workers=[valid.worker_of(index)],
            allow_other_workers=False,
            pure=False,
        )
        for index, part in enumerate(valid.futures)
    ]
    results = client.gather(tasks)
    labels = np.concatenate([labels for labels, _ in results])
    prediction = np.concatenate([prediction for _, prediction in results])
    return labels, prediction


def score_partition(part: Any, scorer: Any, job: DistributedJob) -> tuple[np.ndarray, np.ndarray]:
    """Labels and predictions of one partition (runs on the worker holding it)."""
    engine = get_engine(job.engine)
    labels = engine.to_host(engine.to_array(part[LABEL_COLUMN], job.label_dtype)).astype(job.label_dtype)
    shape: tuple[int, ...] = (0, job.n_classes) if job.task == "multiclass" else (0,)
    if len(labels) == 0:
        return labels, np.empty(shape, dtype=np.float64)
    features = engine.to_array(part[list(job.feature_columns)], np.float32)
    trainer: RandomForestTrainer | XGBoostTrainer
    kind = RandomForestTrainer if job.model == "random_forest" else XGBoostTrainer
    trainer = kind(engine, job.params, seed=job.seed, n_jobs=job.n_jobs, task=job.task, n_classes=job.n_classes)
    if isinstance(trainer, XGBoostTrainer):
        trainer.booster = scorer
    else:
        trainer.forest = scorer
    prediction = np.asarray(engine.to_host(trainer.predict(features)), dtype=np.float64)
    return labels, prediction if job.task == "multiclass" else prediction.reshape(-1)


def _synchronize(client: Any, job: DistributedJob) -> None:
    """Wait for all device work on every worker (GPU timings); nothing to wait for on CPU workers."""
    if job.engine != "gpu":
        return
    tasks = [
        client.submit(_synchronize_device, workers=[worker], allow_other_workers=False, pure=False)
        for worker in job.workers
    ]
    client.gather(tasks)


def _synchronize_device() -> None:
    get_engine("gpu").synchronize()
