"""How raw columns become float32 features: one encoding for training and prediction (the target's is
:mod:`gpu_jobs.target`).

Object/string/categorical features become integer codes (levels in :data:`LEVEL_ORDER`, ``-1`` for missing or
unseen),
booleans 0/1, durations seconds; a datetime column becomes its epoch seconds (under its own name) and
its parts (``<name>.year``, ``.month``, ``.day``, ``.hour``, ``.day_of_week``, Monday = 0; time-zone-aware
values in UTC), as the seed's taxi notebook derives them from the pickup time. Anything else (lists,
structs, ...) is a :class:`UserError` naming the column. Numeric NaNs stay NaN (a missing datetime: NaN
in each of its columns). Category levels and codes are computed by the frame library itself (pandas, or cuDF
on the GPU engine: :func:`category_text`, :func:`learn_levels`, :func:`category_codes` use only calls both
share), with the levels' text and order declared here, so both engines give identical levels and codes.
The :class:`FeatureEncoding` is saved with a model so that predictions encode the same way.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

from gpu_jobs.errors import UserError

_SCALAR_TYPES = (str, bytes, bool, int, float, Decimal, np.number, np.bool_, np.str_, dt.date)
MISSING_CATEGORY_CODE = -1
"""Code of a missing (or, at prediction time, unseen) categorical value."""
LEVEL_ORDER = "Unicode code point order of the level text, which is the byte order of its UTF-8 encoding"
"""How category levels are sorted (Python's ``sorted`` on ``str``): no locale, no engine's collation."""
DATETIME_PARTS: tuple[str, ...] = ("year", "month", "day", "hour", "day_of_week")
"""The parts a datetime feature adds beside its epoch seconds (pandas ``.dt`` attribute names)."""


@dataclass(frozen=True)
class FeatureEncoding:
    """How raw columns become float32 features; saved with a model so predictions encode the same way."""

    feature_names: tuple[str, ...]
    """The raw input columns, in order."""
    categorical_levels: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    temporal_columns: tuple[str, ...] = ()
    """Datetime and duration columns (each becomes seconds)."""
    datetime_columns: tuple[str, ...] = ()
    """The temporal columns that are datetimes: each also gains :data:`DATETIME_PARTS`."""
    derived: Mapping[str, str] = field(default_factory=dict)
    """Feature columns the data's loader derived (``builtin://`` tables), each with the name of its
    :data:`gpu_jobs.builtin.DERIVATIONS` entry: absent from the rows to encode, they are derived again."""

    @property
    def encoded_names(self) -> tuple[str, ...]:
        """The columns of the encoded frame (what a model is trained on), in order."""
        names: list[str] = []
        for name in self.feature_names:
            names.append(name)
            if name in self.datetime_columns:
                names.extend(f"{name}.{part}" for part in DATETIME_PARTS)
        return tuple(names)

    def to_json(self) -> dict[str, Any]:
        return {
            "feature_names": list(self.feature_names),
            "categorical_levels": {name: list(levels) for name, levels in self.categorical_levels.items()},
            "temporal_columns": list(self.temporal_columns),
            "datetime_columns": list(self.datetime_columns),
            "derived": dict(self.derived),
            "encoded_names": list(self.encoded_names),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FeatureEncoding:
        return cls(
            feature_names=tuple(data["feature_names"]),
            categorical_levels={k: tuple(v) for k, v in data.get("categorical_levels", {}).items()},
            temporal_columns=tuple(data.get("temporal_columns", ())),
            datetime_columns=tuple(data.get("datetime_columns", ())),
            derived=dict(data.get("derived", {})),
        )


def require_target_column(columns: Sequence[str] | pd.Index, target: str, source: str) -> None:
    """Raise :class:`UserError` naming ``target`` when it is absent, and a few available columns when
    whoever reads the error could list them anyway (:func:`columns_listable`)."""
    if target in columns:
        return
    names = [str(c) for c in columns]
    if not columns_listable(source):
        raise UserError(f"target column {target!r} not found among the {len(names)} columns of {source}")
    shown = ", ".join(names[:10])
    raise UserError(f"target column {target!r} not found in {source}; {len(names)} columns: {shown}")


def columns_listable(source: str) -> bool:
    """Whether an error may name ``source``'s columns: a built-in table, or a file on this machine (read
    only outside hosted mode, where the caller is this machine's user). Remote data is read with the
    compute's identity, which may reach what the caller cannot: its columns are not named."""
    scheme = urlsplit(source).scheme.lower()
    return scheme in {"", "file", "builtin"} or len(scheme) == 1  # a Windows drive letter


def plan_encoding(features: pd.DataFrame, derived: Mapping[str, str] | None = None) -> FeatureEncoding:
    """Decide how each column becomes a number; :class:`UserError` for a column that cannot. ``derived``:
    the columns the loader derived (:func:`gpu_jobs.builtin.builtin_derived`), kept for prediction."""
    levels: dict[str, tuple[str, ...]] = {}
    temporal: list[str] = []
    for name in features.columns:
        column = features[name]
        kind = column_kind(column)
        if kind == "categorical":
            levels[str(name)] = category_levels(column)
        elif kind == "temporal":
            temporal.append(str(name))
    names = tuple(str(c) for c in features.columns)
    derived = {name: how for name, how in (derived or {}).items() if name in names}
    return FeatureEncoding(names, levels, tuple(temporal), datetime_columns(features, temporal), derived)


def datetime_columns(features: pd.DataFrame, temporal: Sequence[str]) -> tuple[str, ...]:
    """The ``temporal`` columns of ``features`` that are datetimes (not durations): they gain parts."""
    return tuple(name for name in temporal if ptypes.is_datetime64_any_dtype(features[name].dtype))


def category_levels(column: Any) -> tuple[str, ...]:
    """The levels of a categorical column (:func:`learn_levels`); :class:`UserError` for nested values."""
    if isinstance(column, pd.Series) and ptypes.is_object_dtype(column.dtype):  # only pandas holds objects
        present = column.dropna()
        odd_types = {type(v).__name__ for v in present.to_numpy() if not isinstance(v, _SCALAR_TYPES)}
        if odd_types:
            raise UserError(
                f"feature column {column.name!r} holds values of type {', '.join(sorted(odd_types))} "
                "that cannot be encoded as numbers; drop the column or flatten it"
            )
    return learn_levels(column)


def category_text(column: Any) -> Any:
    """``column`` (a pandas or cuDF Series) as text, missing values kept missing, computed by its own library.

    A string column is itself. A categorical column is its values (their text). Anything else is cast
    with ``astype(str)``, then masked where the value was missing (``astype`` writes ``"nan"`` there).
    pandas' object columns of Python objects that are not all ``str`` (numbers mixed with text, bytes,
    dates: columns cuDF's readers never return) keep each distinct value's Python ``str``, as saved models'
    levels were made.
    """
    if str(column.dtype) == "category":
        categories = column.cat.categories
        if isinstance(column, pd.Series) and not _is_text_dtype(categories.dtype):
            return category_text(column.map(str, na_action="ignore").astype(object))
        column = column.astype(categories.dtype)
    if _is_text_dtype(column.dtype):
        return column
    pandas_objects = isinstance(column, pd.Series) and ptypes.is_object_dtype(column.dtype)
    if pandas_objects and ptypes.infer_dtype(column, skipna=True) not in {"string", "empty"}:
        return column.map(str, na_action="ignore")
    return column.astype(str).where(column.notna())


def learn_levels(column: Any) -> tuple[str, ...]:
    """The distinct present values of ``column`` (pandas or cuDF) as text, in :data:`LEVEL_ORDER`.

    The text and the distinct values are the frame library's (on the device for cuDF); only the distinct
    levels come to the host, to be sorted by Python in a declared order that no engine's collation decides.
    """
    distinct = category_text(column).dropna().drop_duplicates()
    levels = [str(level) for level in distinct.to_numpy()]  # already text: str() only types them
    return tuple(sorted(levels))


def category_codes(column: Any, levels: Sequence[str], frame: ModuleType) -> Any:
    """float32 codes of ``column`` (a Series of the ``frame`` library: pandas or cuDF) against ``levels``:
    a value's position in ``levels``; :data:`MISSING_CATEGORY_CODE` for a missing value and for a value
    not among the levels (unseen when the levels were learned).

    Written against the calls pandas and cuDF share: ``astype("category")``, ``.cat.set_categories``
    (which turns a value outside the new categories into a missing one), ``.cat.codes`` (``-1`` for a
    missing value in pandas; a null in cuDF, hence the ``fillna``).
    """
    text = category_text(column)
    categories = frame.Index(list(levels), dtype=text.dtype)
    codes = text.astype("category").cat.set_categories(categories).cat.codes
    return codes.astype(np.float32).fillna(np.float32(MISSING_CATEGORY_CODE))


def _is_text_dtype(dtype: Any) -> bool:
    return bool(ptypes.is_string_dtype(dtype)) and not ptypes.is_object_dtype(dtype)


def encode_features(features: Any, encoding: FeatureEncoding, frame: ModuleType = pd) -> Any:
    """Encode ``features`` (a DataFrame of the ``frame`` library: pandas, or cuDF on the GPU engine) with
    ``encoding`` into a float32 frame of that library with exactly its feature columns.

    Category codes and numbers are computed by the frame library (on the device for cuDF); datetimes and
    durations, rare in training tables, are computed in pandas (a cuDF column makes one trip to the host).
    Categorical columns that are already numeric are taken as codes, and a datetime column that is already
    numeric as epoch seconds (its parts are then derived from them, in UTC). A column the loader derived
    (``encoding.derived``) is derived again when absent, from its source columns (the raw table's rows).
    """
    features = _with_derived(features, encoding)
    absent = [name for name in encoding.feature_names if name not in features.columns]
    if absent:
        raise UserError(f"missing feature column(s): {', '.join(absent)}")
    encoded: dict[str, Any] = {}
    for name in encoding.feature_names:
        column = features[name]
        if name in encoding.categorical_levels and not _is_plain_numeric(column):
            encoded[name] = category_codes(column, encoding.categorical_levels[name], frame)
        elif name in encoding.temporal_columns and not _is_plain_numeric(column):
            encoded[name] = _seconds(on_host(column)).astype(np.float32)
        else:
            encoded[name] = _numeric(column)
        if name in encoding.datetime_columns:
            encoded.update(_datetime_parts(name, on_host(column)))
    return frame.DataFrame(encoded, index=features.index)


def on_host(column: Any) -> pd.Series:
    """A pandas Series of ``column`` (a cuDF column is copied to the host)."""
    return column if isinstance(column, pd.Series) else column.to_pandas()


def _with_derived(features: pd.DataFrame, encoding: FeatureEncoding) -> pd.DataFrame:
    """``features`` with each absent derived column computed from its sources (all present), as the loader did."""
    from gpu_jobs.builtin import DERIVATIONS

    added: dict[str, pd.Series] = {}
    for name, how in encoding.derived.items():
        derivation = DERIVATIONS.get(how)
        if name in features.columns or derivation is None:
            continue
        lacking = [source for source in derivation.sources if source not in features.columns]
        if lacking:
            raise UserError(
                f"missing feature column {name!r}: give it, or {', '.join(derivation.sources)} to derive it from"
                f" (missing: {', '.join(lacking)})"
            )
        added[name] = derivation.compute(features)
    return features.assign(**added) if added else features


def _datetime_parts(name: str, column: pd.Series) -> dict[str, np.ndarray]:
    """``<name>.<part>`` for each of :data:`DATETIME_PARTS` (NaN where the value is missing)."""
    if _is_plain_numeric(column):  # epoch seconds given
        column = pd.to_datetime(column.astype(np.float64) * 1e9, unit="ns")
    elif getattr(column.dt, "tz", None) is not None:
        column = column.dt.tz_convert("UTC").dt.tz_localize(None)
    return {
        f"{name}.{part}": getattr(column.dt, part).to_numpy(dtype=np.float32, na_value=np.nan)
        for part in DATETIME_PARTS
    }


def _is_missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # arrays and other containers are not "missing"
        return False


def column_kind(column: Any) -> str:
    """``numeric``, ``temporal`` or ``categorical``; :class:`UserError` for a type that cannot be encoded."""
    dtype = column.dtype
    if ptypes.is_bool_dtype(dtype) or (ptypes.is_numeric_dtype(dtype) and not ptypes.is_complex_dtype(dtype)):
        return "numeric"
    if ptypes.is_datetime64_any_dtype(dtype) or ptypes.is_timedelta64_dtype(dtype):
        return "temporal"
    if str(dtype) == "category" or ptypes.is_object_dtype(dtype) or ptypes.is_string_dtype(dtype):  # cuDF's too
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


def _seconds(column: pd.Series) -> np.ndarray:
    seconds: np.ndarray  # pandas is untyped here
    if ptypes.is_timedelta64_dtype(column.dtype):
        seconds = (column / pd.Timedelta(seconds=1)).to_numpy(dtype=np.float64, na_value=np.nan)
        return seconds
    if getattr(column.dt, "tz", None) is not None:
        column = column.dt.tz_convert("UTC").dt.tz_localize(None)
    seconds = ((column - pd.Timestamp(0)) / pd.Timedelta(seconds=1)).to_numpy(dtype=np.float64, na_value=np.nan)
    return seconds


def _numeric(column: Any) -> Any:
    """float32 values, NaN where missing: a NumPy array from pandas; a cuDF column on the device (its nulls
    stay nulls until the engine's ``to_array`` turns them into NaN)."""
    if not isinstance(column, pd.Series):
        return column.astype(np.float32)
    try:
        values: np.ndarray = column.to_numpy(dtype=np.float32, na_value=np.nan)  # pandas is untyped here
        return values
    except (TypeError, ValueError):  # numpy's message quotes the value: data, never shown
        raise UserError(
            f"feature column {column.name!r} is not numeric: a value of type {column.dtype} is not a number"
        ) from None
