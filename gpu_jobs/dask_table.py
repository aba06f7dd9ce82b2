"""The encoded table of a distributed trial, read on the Dask workers.

The parts of ``data`` (or slices of the built-in table) are read on the workers with the same readers and
encoding as :mod:`gpu_jobs.data`; category levels and the target's classes are computed over the whole
table's rows with a target first (as the single-process path learns them, so codes agree), so every
partition encodes alike. The client lists the parts, so a local path must be
visible to the client and to every worker (use ``abfs://`` or a shared mount across machines).

Folds: each row gets a fold in ``0..K-1`` drawn per partition and per class (seeded with ``seed`` and the
partition number; regression rows as one group), so folds are stratified and reproducible for the same
data and partitioning; this is not scikit-learn's ``StratifiedKFold`` (which a single-process trial uses),
so the same seed validates on other rows here. ``max_rows`` samples a fraction ``max_rows / rows`` of the
rows (approximately ``max_rows``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from gpu_jobs.builtin import builtin_derived, builtin_task
from gpu_jobs.data import (
    BUILTIN_SCHEME,
    ColumnsAbsent,
    list_parts,
    read_builtin,
    read_part,
    select_columns,
    wanted_columns,
)
from gpu_jobs.encoding import (
    FeatureEncoding,
    category_levels,
    column_kind,
    datetime_columns,
    encode_features,
    require_target_column,
)
from gpu_jobs.errors import UserError
from gpu_jobs.target import TargetEncoding, plan_target

LABEL_COLUMN = "__label__"
FOLD_COLUMN = "__fold__"
PARTITIONS_PER_WORKER_FOR_BUILTIN = 1


class DistributedTable:
    """The encoded table as a Dask DataFrame (features ``f0..``, label, fold) plus what was learned."""

    def __init__(
        self,
        frame: Any,
        *,
        encoding: FeatureEncoding,
        target_encoding: TargetEncoding,
        rows: int,
        minority_class_rows: int,
        rows_dropped_missing_target: int,
        missing_feature_values: int = 0,
    ) -> None:
        self.frame = frame
        self.encoding = encoding
        self.target_encoding = target_encoding
        self.rows = rows
        self.minority_class_rows = minority_class_rows
        self.rows_dropped_missing_target = rows_dropped_missing_target
        self.missing_feature_values = missing_feature_values
        # XGBoost rejects some characters in column names: train on positional names.
        self.feature_columns = [f"f{i}" for i in range(len(encoding.encoded_names))]


def load_distributed_table(
    client: Any,
    uri: str,
    target: str,
    *,
    data_format: str | None,
    max_rows: int | None,
    seed: int,
    cv_folds: int,
    n_workers: int,
    task: str = "auto",
    features: Sequence[str] | None = None,
) -> DistributedTable:
    """Read ``uri`` on the workers, learn the task, levels and classes over all of it, encode and assign
    folds (the built-in table is read as ``n_workers`` slices)."""
    import dask.dataframe as dd
    from dask.base import compute

    if max_rows is not None and max_rows < 1:
        raise UserError(f"max_rows must be at least 1, got {max_rows}")
    sources = partition_sources(uri, target, data_format, n_workers=n_workers)
    columns = wanted_columns(target, features)  # each partition reads only these (Parquet/CSV projection)
    try:
        empty = client.submit(_empty_like_source, sources[0], columns, pure=False).result()
    except ColumnsAbsent:  # read it whole once, so select_columns names what is absent
        empty = client.submit(_empty_like_source, sources[0], None, pure=False).result()
    meta = select_columns(empty, target, features, uri)
    require_target_column(meta.columns, target, uri)
    raw = dd.from_map(functools.partial(_read_source, columns=columns), sources, meta=meta, enforce_metadata=False)
    if features is not None:
        raw = raw[list(meta.columns)]
    feature_names = [str(c) for c in meta.columns if c != target]
    if not feature_names:
        raise UserError(f"{uri} has no feature columns besides the target {target!r}")
    kinds = {name: column_kind(meta[name]) for name in feature_names}
    categorical = [name for name in feature_names if kinds[name] == "categorical"]
    labelled = raw[~raw[target].isna()]  # levels from the rows trained on, as gpu_jobs.data learns them
    level_parts, target_values, missing_target, total_rows = compute(
        [labelled[name].map_partitions(_partition_levels, meta=(name, object)) for name in categorical],
        raw[target].map_partitions(_partition_target_values, meta=(target, object)),
        raw[target].isna().sum(),
        raw.shape[0],
    )
    missing_target, total_rows = int(missing_target), int(total_rows)
    target_encoding = plan_target(
        meta[target].dtype, list(pd.unique(target_values)), target=target, requested=task, rows_dropped=missing_target
    )
    temporal = [name for name in feature_names if kinds[name] == "temporal"]
    encoding = FeatureEncoding(
        feature_names=tuple(feature_names),
        categorical_levels={
            name: tuple(sorted(set(levels))) for name, levels in zip(categorical, level_parts, strict=True)
        },
        temporal_columns=tuple(temporal),
        datetime_columns=datetime_columns(meta, temporal),
        derived={name: how for name, how in builtin_derived(uri).items() if name in feature_names},
    )
    encoded_meta = _encoded_meta(len(encoding.encoded_names), target_encoding.label_dtype)
    encoded = raw.map_partitions(
        _encode_partition,
        target=target,
        target_encoding=target_encoding,
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
    feature_columns = list(encoded_meta.columns[: len(encoding.encoded_names)])
    rows, class_rows, missing_features = compute(
        encoded.shape[0],
        encoded[LABEL_COLUMN].value_counts() if target_encoding.task != "regression" else encoded.shape[0],
        encoded[feature_columns].isna().sum().sum(),
    )
    if target_encoding.task != "regression":  # a class the sample lost has 0 rows
        class_rows = min(int(class_rows.get(code, 0)) for code in range(target_encoding.n_classes))
    return DistributedTable(
        encoded,
        encoding=encoding,
        target_encoding=target_encoding,
        rows=int(rows),
        minority_class_rows=int(class_rows),
        rows_dropped_missing_target=missing_target,
        missing_feature_values=int(missing_features),
    )


def partition_sources(uri: str, target: str, data_format: str | None, *, n_workers: int) -> list[tuple[str, ...]]:
    """What each partition reads: a slice of a built-in table, or one part (file) of ``uri``."""
    if uri.startswith(BUILTIN_SCHEME):
        builtin_task(uri, target)  # checks the name and target on the client before shipping work
        count = max(1, n_workers * PARTITIONS_PER_WORKER_FOR_BUILTIN)
        return [("builtin", uri, target, str(index), str(count)) for index in range(count)]
    parts, fmt = list_parts(uri, data_format)
    return [("part", uri, part, fmt) for part in parts]


def _read_source(source: tuple[str, ...], columns: list[str] | None = None) -> pd.DataFrame:
    """Read one partition (runs on a worker): every column, or only ``columns``."""
    if source[0] == "builtin":
        _, uri, target, index, count = source
        return read_builtin(uri, target, columns).iloc[int(index) :: int(count)].reset_index(drop=True)
    _, uri, part, fmt = source
    return read_part(uri, part, fmt, columns)


def _empty_like_source(source: tuple[str, ...], columns: list[str] | None) -> pd.DataFrame:
    """The columns and dtypes of one partition, without its rows (runs on a worker)."""
    return _read_source(source, columns).iloc[:0]


def _partition_levels(column: pd.Series) -> pd.Series:
    return pd.Series(list(category_levels(column)), dtype=object, name=column.name)


def _partition_target_values(column: pd.Series) -> pd.Series:
    return pd.Series(list(column.dropna().unique()), dtype=object, name=column.name)


def _encoded_meta(n_features: int, label_dtype: type[np.generic]) -> pd.DataFrame:
    columns: dict[str, pd.Series] = {f"f{i}": pd.Series([], dtype=np.float32) for i in range(n_features)}
    columns[LABEL_COLUMN] = pd.Series([], dtype=label_dtype)
    columns[FOLD_COLUMN] = pd.Series([], dtype=np.int8)
    return pd.DataFrame(columns)


def stratified_fold_column(labels: np.ndarray, cv_folds: int, rng: np.random.Generator) -> np.ndarray:
    """Folds ``0..K-1`` for each row: within each class, a random permutation dealt round-robin from a
    random starting fold, so every fold gets the same share of each class (to within one row). Float
    labels (regression) are one group: a shuffled, balanced split."""
    folds = np.empty(len(labels), dtype=np.int8)
    groups = np.zeros(len(labels), dtype=np.int8) if labels.dtype.kind == "f" else labels
    for label in np.unique(groups):
        rows = np.flatnonzero(groups == label)
        start = int(rng.integers(cv_folds))
        folds[rng.permutation(rows)] = (start + np.arange(len(rows))) % cv_folds
    return folds


def _encode_partition(
    part: pd.DataFrame,
    *,
    target: str,
    target_encoding: TargetEncoding,
    encoding: FeatureEncoding,
    seed: int,
    cv_folds: int,
    partition_info: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Drop rows without a target, encode features as ``f0..``, add label and stratified fold columns."""
    part = part.loc[part[target].notna()]
    features = encode_features(part, encoding)
    features.columns = [f"f{i}" for i in range(len(encoding.encoded_names))]
    labels = target_encoding.encode(part[target])
    number = int(partition_info["number"]) if partition_info else 0
    rng = np.random.default_rng([seed, number])
    features[LABEL_COLUMN] = labels
    features[FOLD_COLUMN] = stratified_fold_column(labels, cv_folds, rng)
    return features.reset_index(drop=True)
