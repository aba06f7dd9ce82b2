"""How raw columns become float32 features, and the target 0/1: one encoding for training and prediction.

Object/string/categorical features become integer codes (sorted levels, ``-1`` for missing or unseen),
booleans 0/1, datetimes and durations seconds; anything else (lists, structs, ...) is a
:class:`UserError` naming the column. Numeric NaNs stay NaN. The :class:`FeatureEncoding` is saved with
a model so that predictions encode the same way.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

from gpu_jobs.errors import UserError

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


def target_classes(values: Sequence[Any], target: str, rows_dropped: int = 0) -> tuple[Any, Any]:
    """Order the two distinct target values as (negative, positive): False<True, else sorted order."""
    distinct = [v for v in values if not _is_missing(v)]
    if len(distinct) != 2:  # the values are data: counted, never shown
        dropped = f" after dropping {rows_dropped} rows with a missing target" if rows_dropped else ""
        raise UserError(
            f"target column {target!r} has {len(distinct)} distinct value(s){dropped}: "
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
    except (TypeError, ValueError):  # numpy's message quotes the value: data, never shown
        raise UserError(
            f"feature column {column.name!r} is not numeric: a value of type {column.dtype} is not a number"
        ) from None
