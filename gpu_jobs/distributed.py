"""One HPO trial on a Dask cluster (the seed's multi-node multi-GPU example), with the same result shape.

The engine is what the *workers* have (``resolve_engine`` runs on every worker): GPU workers get
dask-cuDF partitions, ``cuml.dask.ensemble.RandomForestClassifier`` and ``xgboost.dask`` on ``cuda``; CPU
workers get pandas partitions, ``xgboost.dask`` on ``cpu`` and, for the random forest, one scikit-learn
forest per partition (``n_estimators`` split between partitions) joined into one forest by concatenating
``estimators_``. Everything else is one code path.

Data: the parts of ``data`` (or slices of the built-in table) are read on the workers with the same
readers and encoding as :mod:`gpu_jobs.data`; category levels and the target's classes are computed over
the whole table first, so every partition encodes alike. The client lists the parts, so a local path must
be visible to the client and to every worker (use ``abfs://`` or a shared mount across machines).

Evaluation: true K-fold over a fold column. Each row gets a fold in ``0..K-1`` drawn per partition and
per class (seeded with ``seed`` and the partition number), so folds are stratified and reproducible for
the same data and partitioning; fold ``k`` trains on the other folds and scores on fold ``k``. Scores are
computed on the client from the gathered validation labels and probabilities. ``max_rows`` samples a
fraction ``max_rows / rows`` of the rows (approximately ``max_rows``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gpu_jobs.data import (
    BUILTIN_SCHEME,
    FeatureEncoding,
    builtin_table,
    category_levels,
    column_kind,
    encode_features,
    encode_target,
    list_parts,
    read_part,
    require_target_column,
    target_classes,
)
from gpu_jobs.engine import get_engine, resolve_engine
from gpu_jobs.errors import UserError
from gpu_jobs.train import (
    MODEL_FILES,
    FoldCallback,
    RandomForestTrainer,
    TrialRequest,
    check_request,
    cross_validation,
    refit_and_save,
    require_enough_rows,
    trial_record,
    write_trial_files,
    xgboost_params,
)

LABEL_COLUMN = "__label__"
FOLD_COLUMN = "__fold__"
PARTITIONS_PER_WORKER_FOR_BUILTIN = 1


def run_distributed(
    *,
    scheduler: str,
    data: str,
    target: str,
    model: str,
    params: dict[str, float],
    cv_folds: int = 5,
    seed: int = 0,
    engine: str = "auto",
    output: str | Path | None = None,
    data_format: str | None = None,
    max_rows: int | None = None,
    primary_metric: str = "accuracy",
    n_jobs: int | None = None,
    on_fold: FoldCallback | None = None,
) -> dict[str, Any]:
    """Cross-validate ``model`` on the Dask cluster at ``scheduler``; same arguments and result as
    :func:`gpu_jobs.train.run_trial`, plus ``n_workers`` and ``evaluation`` in the result."""
    import dask
    from distributed import Client

    started = time.perf_counter()
    request = check_request(model=model, params=params, cv_folds=cv_folds, primary_metric=primary_metric, engine=engine)
    try:
        client = Client(scheduler, timeout=dask.config.get("distributed.comm.timeouts.connect"))
    except (OSError, TimeoutError) as exc:
        raise UserError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
    with client:
        workers = list(client.scheduler_info()["workers"])
        if not workers:
            raise UserError(f"the Dask cluster at {scheduler} has no workers")
        engine_name = resolve_cluster_engine(client, engine)
        table = load_distributed_table(
            client, data, target, data_format=data_format, max_rows=max_rows, seed=seed, cv_folds=cv_folds
        )
        require_enough_rows(table.minority_class_rows, cv_folds)
        frame = table.frame if engine_name == "cpu" else table.frame.to_backend("cudf")
        frame = frame.repartition(npartitions=len(workers)).persist()
        _wait(frame)
        trainer_class = _DISTRIBUTED_TRAINERS[(model, engine_name)]
        host_scores = get_engine("cpu")  # validation labels and probabilities are gathered to the client
        with cross_validation(request, engine_name=engine_name, seed=seed, on_fold=on_fold) as folds:
            for fold in range(cv_folds):
                train_part = frame[frame[FOLD_COLUMN] != fold]
                trainer = trainer_class(client, request, table.feature_columns, seed=seed, n_jobs=n_jobs)
                tick = time.perf_counter()
                trainer.fit(train_part[table.feature_columns], train_part[LABEL_COLUMN])
                fitted = time.perf_counter()
                labels, proba = trainer.predict_with_labels(frame[frame[FOLD_COLUMN] == fold])
                predicted = time.perf_counter()
                folds.record(
                    host_scores.score(labels, proba),
                    fit_seconds=fitted - tick,
                    predict_seconds=predicted - fitted,
                )
            metrics = folds.metrics(
                engine_name=engine_name,
                rows=table.rows,
                rows_dropped=table.rows_dropped_missing_target,
                n_features=len(table.feature_columns),
            )
            metrics.update(
                n_jobs=n_jobs,
                n_workers=len(workers),
                evaluation="k-fold over a stratified, seeded random fold column",
            )
            if output is not None:
                final = trainer_class(client, request, table.feature_columns, seed=seed, n_jobs=n_jobs)
                metrics.update(refit_and_save(final, frame[table.feature_columns], frame[LABEL_COLUMN], output))
            metrics["total_seconds"] = time.perf_counter() - started
            if output is not None:
                write_trial_files(
                    Path(output),
                    metrics=metrics,
                    trial={
                        **trial_record(request, data=data, target=target, seed=seed, max_rows=max_rows),
                        "engine": engine_name,
                        "scheduler": scheduler,
                    },
                    encoding=table.encoding,
                    target_classes=table.target_classes,
                )
            folds.finish(metrics)
    return metrics


def resolve_cluster_engine(client: Any, requested: str) -> str:
    """Run :func:`resolve_engine` on every worker: ``gpu`` only if all of them can, else ``cpu``
    (or :class:`UserError` when ``gpu`` was requested and some worker cannot)."""
    answers: Mapping[str, Any] = client.run(resolve_engine, requested, on_error="return")
    failures = {worker: answer for worker, answer in answers.items() if isinstance(answer, BaseException)}
    if failures:
        worker, error = next(iter(failures.items()))
        if isinstance(error, UserError):
            raise UserError(f"worker {worker}: {error}") from None
        raise error
    engines = set(answers.values())
    return "gpu" if engines == {"gpu"} else "cpu"


class DistributedTable:
    """The encoded table as a Dask DataFrame (features ``f0..``, label, fold) plus what was learned."""

    def __init__(
        self,
        frame: Any,
        *,
        encoding: FeatureEncoding,
        target_classes: tuple[str, str],
        rows: int,
        positive_rows: int,
        rows_dropped_missing_target: int,
    ) -> None:
        self.frame = frame
        self.encoding = encoding
        self.target_classes = target_classes
        self.rows = rows
        self.positive_rows = positive_rows
        self.rows_dropped_missing_target = rows_dropped_missing_target
        # XGBoost rejects some characters in column names: train on positional names.
        self.feature_columns = [f"f{i}" for i in range(len(encoding.feature_names))]

    @property
    def minority_class_rows(self) -> int:
        return min(self.positive_rows, self.rows - self.positive_rows)


def load_distributed_table(
    client: Any,
    uri: str,
    target: str,
    *,
    data_format: str | None,
    max_rows: int | None,
    seed: int,
    cv_folds: int,
) -> DistributedTable:
    """Read ``uri`` on the workers, learn levels/classes over all of it, encode and assign folds."""
    import dask
    import dask.dataframe as dd

    if max_rows is not None and max_rows < 1:
        raise UserError(f"max_rows must be at least 1, got {max_rows}")
    sources = partition_sources(uri, target, data_format, n_workers=len(client.scheduler_info()["workers"]))
    meta = client.submit(_empty_like_source, sources[0], pure=False).result()
    require_target_column(meta.columns, target, uri)
    raw = dd.from_map(_read_source, sources, meta=meta, enforce_metadata=False)
    feature_names = [str(c) for c in meta.columns if c != target]
    if not feature_names:
        raise UserError(f"{uri} has no feature columns besides the target {target!r}")
    kinds = {name: column_kind(meta[name]) for name in feature_names}
    categorical = [name for name in feature_names if kinds[name] == "categorical"]
    level_parts, target_values, missing_target, total_rows = dask.compute(
        [raw[name].map_partitions(_partition_levels, meta=(name, object)) for name in categorical],
        raw[target].map_partitions(_partition_target_values, meta=(target, object)),
        raw[target].isna().sum(),
        raw.shape[0],
    )
    missing_target, total_rows = int(missing_target), int(total_rows)
    classes = target_classes(list(pd.unique(target_values)), target, missing_target)
    encoding = FeatureEncoding(
        feature_names=tuple(feature_names),
        categorical_levels={
            name: tuple(sorted(set(levels))) for name, levels in zip(categorical, level_parts, strict=True)
        },
        temporal_columns=tuple(name for name in feature_names if kinds[name] == "temporal"),
    )
    encoded_meta = _encoded_meta(len(feature_names))
    encoded = raw.map_partitions(
        _encode_partition,
        target=target,
        classes=classes,
        encoding=encoding,
        seed=seed,
        cv_folds=cv_folds,
        meta=encoded_meta,
        enforce_metadata=False,
    )
    kept_rows = total_rows - missing_target
    if max_rows is not None and kept_rows > max_rows:
        encoded = encoded.sample(frac=max_rows / kept_rows, random_state=seed)
    encoded = encoded.persist()
    rows, positive_rows = dask.compute(encoded.shape[0], encoded[LABEL_COLUMN].sum())
    return DistributedTable(
        encoded,
        encoding=encoding,
        target_classes=(str(classes[0]), str(classes[1])),
        rows=int(rows),
        positive_rows=int(positive_rows),
        rows_dropped_missing_target=missing_target,
    )


def partition_sources(uri: str, target: str, data_format: str | None, *, n_workers: int) -> list[tuple[str, ...]]:
    """What each partition reads: a slice of a built-in table, or one part (file) of ``uri``."""
    if uri.startswith(BUILTIN_SCHEME):
        builtin_table(uri, target)  # checks the name and target on the client before shipping work
        count = max(1, n_workers * PARTITIONS_PER_WORKER_FOR_BUILTIN)
        return [("builtin", uri, target, str(index), str(count)) for index in range(count)]
    parts, fmt = list_parts(uri, data_format)
    return [("part", uri, part, fmt) for part in parts]


def _read_source(source: tuple[str, ...]) -> pd.DataFrame:
    """Read one partition (runs on a worker)."""
    if source[0] == "builtin":
        _, uri, target, index, count = source
        return builtin_table(uri, target).iloc[int(index) :: int(count)].reset_index(drop=True)
    _, uri, part, fmt = source
    return read_part(uri, part, fmt)


def _empty_like_source(source: tuple[str, ...]) -> pd.DataFrame:
    """The columns and dtypes of one partition, without its rows (runs on a worker)."""
    return _read_source(source).iloc[:0]


def _partition_levels(column: pd.Series) -> pd.Series:
    return pd.Series(list(category_levels(column)), dtype=object, name=column.name)


def _partition_target_values(column: pd.Series) -> pd.Series:
    return pd.Series(list(column.dropna().unique()), dtype=object, name=column.name)


def _encoded_meta(n_features: int) -> pd.DataFrame:
    columns: dict[str, pd.Series] = {f"f{i}": pd.Series([], dtype=np.float32) for i in range(n_features)}
    columns[LABEL_COLUMN] = pd.Series([], dtype=np.int32)
    columns[FOLD_COLUMN] = pd.Series([], dtype=np.int8)
    return pd.DataFrame(columns)


def stratified_fold_column(labels: np.ndarray, cv_folds: int, rng: np.random.Generator) -> np.ndarray:
    """Folds ``0..K-1`` for each row: within each class, a random permutation dealt round-robin from a
    random starting fold, so every fold gets the same share of each class (to within one row)."""
    folds = np.empty(len(labels), dtype=np.int8)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        start = int(rng.integers(cv_folds))
        folds[rng.permutation(rows)] = (start + np.arange(len(rows))) % cv_folds
    return folds


def _encode_partition(
    part: pd.DataFrame,
    *,
    target: str,
    classes: tuple[Any, Any],
    encoding: FeatureEncoding,
    seed: int,
    cv_folds: int,
    partition_info: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Drop rows without a target, encode features as ``f0..``, add label and stratified fold columns."""
    part = part.loc[part[target].notna()]
    features = encode_features(part, encoding)
    features.columns = [f"f{i}" for i in range(len(encoding.feature_names))]
    labels = encode_target(part[target], classes).to_numpy()
    number = int(partition_info["number"]) if partition_info else 0
    rng = np.random.default_rng([seed, number])
    features[LABEL_COLUMN] = labels
    features[FOLD_COLUMN] = stratified_fold_column(labels, cv_folds, rng)
    return features.reset_index(drop=True)


def _wait(collection: Any) -> None:
    from distributed import wait

    wait(collection)


def _to_host(values: Any) -> np.ndarray:
    if hasattr(values, "to_numpy"):
        return np.asarray(values.to_numpy())
    if hasattr(values, "get"):  # cupy
        return np.asarray(values.get())
    return np.asarray(values)


class _DistributedTrainer:
    def __init__(
        self,
        client: Any,
        request: TrialRequest,
        feature_columns: Sequence[str],
        *,
        seed: int,
        n_jobs: int | None,
    ) -> None:
        self.client = client
        self.params = request.params
        self.feature_columns = list(feature_columns)
        self.seed = seed
        self.n_jobs = n_jobs

    def predict_positive(self, features: Any) -> Any:
        """A lazy collection of positive-class probabilities (subclasses that use the default
        :meth:`predict_with_labels` provide it)."""
        raise TypeError(f"{type(self).__name__} scores through predict_with_labels only")

    def predict_with_labels(self, valid: Any) -> tuple[np.ndarray, np.ndarray]:
        """Labels and positive-class probabilities of ``valid``, gathered to the client in one go."""
        import dask

        proba = self.predict_positive(valid[self.feature_columns])
        labels, proba = dask.compute(valid[LABEL_COLUMN], proba)
        return _to_host(labels).astype(np.int32), _to_host(proba).astype(np.float64).reshape(-1)


class DaskXGBoostTrainer(_DistributedTrainer):
    """``xgboost.dask`` on either engine (the device comes from the partitions' backend)."""

    device = "cpu"

    def fit(self, features: Any, labels: Any) -> None:
        import xgboost.dask as dxgb

        matrix = dxgb.DaskQuantileDMatrix(self.client, features, labels, max_bin=int(self.params["max_bin"]))
        trained = dxgb.train(
            self.client,
            xgboost_params(self.params, device=self.device, seed=self.seed, n_jobs=self.n_jobs),
            matrix,
            num_boost_round=int(self.params["num_boost_round"]),
        )
        self.booster = trained["booster"]

    def predict_positive(self, features: Any) -> Any:
        import xgboost.dask as dxgb

        return dxgb.inplace_predict(self.client, self.booster, features)

    def save(self, directory: Path) -> Path:
        path = directory / MODEL_FILES["xgboost"]
        self.booster.feature_names = None  # predictions come from plain arrays (see load_model)
        self.booster.save_model(path)
        return path


class DaskXGBoostGpuTrainer(DaskXGBoostTrainer):
    device = "cuda"


def _fit_partition_forest(
    part_features: pd.DataFrame,
    part_labels: pd.Series,
    params: Mapping[str, float],
    n_trees: int,
    seed: int,
    n_jobs: int | None,
) -> Any:
    """Fit ``n_trees`` scikit-learn trees on one partition (runs on a worker); None without both classes."""
    labels = part_labels.to_numpy(dtype=np.int32)
    if n_trees < 1 or len(np.unique(labels)) < 2:
        return None
    trainer = RandomForestTrainer(get_engine("cpu"), {**params, "n_estimators": n_trees}, seed=seed, n_jobs=n_jobs)
    trainer.fit(part_features.to_numpy(dtype=np.float32), labels)
    return trainer.forest


def combine_forests(forests: Sequence[Any], *, n_jobs: int | None = None) -> Any:
    """One scikit-learn forest holding the trees of all ``forests`` (each fitted on both classes)."""
    import copy

    usable = [forest for forest in forests if forest is not None]
    if not usable:
        raise UserError("no data partition holds both target classes: cannot train a random forest")
    combined = copy.copy(usable[0])
    combined.estimators_ = [tree for forest in usable for tree in forest.estimators_]
    combined.n_estimators = len(combined.estimators_)
    combined.n_jobs = n_jobs
    return combined


def _score_inputs_of_partition(
    part: pd.DataFrame, forest: Any, feature_columns: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and the forest's positive-class probabilities for one partition (runs on a worker)."""
    trainer = RandomForestTrainer(get_engine("cpu"), {}, seed=0, n_jobs=forest.n_jobs)
    trainer.forest = forest
    proba = trainer.predict_positive(part[list(feature_columns)].to_numpy(dtype=np.float32))
    return part[LABEL_COLUMN].to_numpy(dtype=np.int32), np.asarray(proba, dtype=np.float64)


class DaskForestCpuTrainer(_DistributedTrainer):
    """Per-partition scikit-learn forests, ``n_estimators`` split between partitions, joined into one."""

    def fit(self, features: Any, labels: Any) -> None:
        from dask import delayed

        feature_parts = features.to_delayed()
        label_parts = labels.to_delayed()
        total = int(self.params["n_estimators"])
        shares = [len(chunk) for chunk in np.array_split(np.arange(total), len(feature_parts))]
        seeds = np.random.SeedSequence(self.seed).generate_state(len(feature_parts))
        tasks = [
            delayed(_fit_partition_forest)(x, y, self.params, share, int(part_seed), self.n_jobs)
            for x, y, share, part_seed in zip(feature_parts, label_parts, shares, seeds, strict=True)
        ]
        self.forest = combine_forests(self.client.gather(self.client.compute(tasks)), n_jobs=self.n_jobs)

    def predict_with_labels(self, valid: Any) -> tuple[np.ndarray, np.ndarray]:
        from dask import delayed

        forest = self.client.scatter(self.forest, broadcast=True)
        tasks = [delayed(_score_inputs_of_partition)(part, forest, self.feature_columns) for part in valid.to_delayed()]
        results = self.client.gather(self.client.compute(tasks))
        labels = np.concatenate([labels for labels, _ in results])
        proba = np.concatenate([proba for _, proba in results])
        return labels, proba

    def save(self, directory: Path) -> Path:
        import joblib

        path = directory / MODEL_FILES["random_forest"]
        joblib.dump(self.forest, path, compress=3)
        return path


class DaskForestGpuTrainer(_DistributedTrainer):
    """``cuml.dask.ensemble.RandomForestClassifier`` over dask-cuDF partitions."""

    def fit(self, features: Any, labels: Any) -> None:
        from cuml.dask.ensemble import RandomForestClassifier

        self.forest = RandomForestClassifier(
            client=self.client,
            n_estimators=int(self.params["n_estimators"]),
            max_depth=int(self.params["max_depth"]),
            max_features=float(self.params["max_features"]),
            n_bins=int(self.params["n_bins"]),
            min_samples_leaf=int(self.params["min_samples_leaf"]),
            random_state=self.seed,
        )
        self.forest.fit(features.fillna(np.float32(-1.0e30)), labels.astype(np.int32))

    def predict_positive(self, features: Any) -> Any:
        proba = self.forest.predict_proba(features.fillna(np.float32(-1.0e30)))
        return proba.iloc[:, 1] if hasattr(proba, "iloc") else proba[:, 1]

    def save(self, directory: Path) -> Path:
        import joblib

        path = directory / MODEL_FILES["random_forest"]
        joblib.dump(get_engine("gpu").portable_forest(self.forest.get_combined_model()), path, compress=3)
        return path


_DISTRIBUTED_TRAINERS: dict[tuple[str, str], Callable[..., Any]] = {
    ("xgboost", "cpu"): DaskXGBoostTrainer,
    ("xgboost", "gpu"): DaskXGBoostGpuTrainer,
    ("random_forest", "cpu"): DaskForestCpuTrainer,
    ("random_forest", "gpu"): DaskForestGpuTrainer,
}
