"""The target column: which task it poses (binary, multiclass, regression) and how it becomes labels.

:func:`plan_target` decides once per data set, from the column's type and distinct values, and the
:class:`TargetEncoding` it returns is saved with the model (``features.json``) so predictions give back
the original labels. ``task: auto`` infers:

* a boolean, string or categorical column poses classes (its distinct values);
* a numeric column whose values are all whole numbers, with at most :data:`MAX_AUTO_CLASSES` distinct
  values, poses classes too (``0/1``, digit labels); any other numeric column is a regression target;
* two classes make a ``binary`` task, more a ``multiclass`` one.

Class codes are ``0..K-1`` in sorted order (``False < True``; values that do not compare are sorted as
text). Messages never show the data's values: a count and a type say enough and leak nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

from gpu_jobs.errors import UserError
from gpu_jobs.metrics import TASK_REQUESTS, TASKS, Task

MAX_AUTO_CLASSES = 20
"""A whole-number target with more distinct values than this is read as a quantity (regression) by ``auto``."""
MAX_CLASSES = 1000
"""More classes than this are refused: one probability column per class would not be a useful model."""


@dataclass(frozen=True)
class TargetEncoding:
    """The task and, for classes, the original value of each class code (``classes[code]``)."""

    task: Task
    classes: tuple[Any, ...] = ()
    reason: str = ""
    """Why this task: what the data showed (``auto``) or that the spec said so."""

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def label_dtype(self) -> type[np.generic]:
        """int32 class codes, or float32 values for regression."""
        return np.float32 if self.task == "regression" else np.int32

    def encode(self, column: pd.Series) -> np.ndarray:
        """Labels of a column without missing values: class codes, or the values as float32."""
        if self.task == "regression":
            values: np.ndarray = column.to_numpy(dtype=np.float32)  # pandas is untyped here
            return values
        codes = pd.Index(list(self.classes), dtype=object).get_indexer(column.astype(object))
        if (codes < 0).any():
            raise UserError(f"target column {column.name!r} holds a value outside the classes learned from the data")
        labels: np.ndarray = codes.astype(np.int32)
        return labels

    def decode(self, codes: Any) -> np.ndarray:
        """The original labels of class codes (an object array)."""
        return np.asarray(self.classes, dtype=object)[np.asarray(codes, dtype=np.int64)]

    def minority_rows(self, labels: np.ndarray) -> int:
        """Rows of the rarest class (every class must reach each fold); all rows for regression."""
        if self.task == "regression":
            return len(labels)
        return int(np.bincount(labels, minlength=self.n_classes).min()) if len(labels) else 0

    def to_json(self) -> dict[str, Any]:
        classes = [_json_scalar(v) for v in self.classes]
        return {"task": self.task, "target_classes": classes, "task_reason": self.reason}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TargetEncoding:
        """Read :meth:`to_json`'s fields; a file written before tasks existed is a binary one."""
        task = data.get("task", "binary")
        if task not in TASKS:
            raise UserError(f"unknown task {task!r} in the saved model: expected one of {', '.join(TASKS)}")
        return cls(cast(Task, task), tuple(data.get("target_classes", ())), str(data.get("task_reason", "")))


def _json_scalar(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    return value if isinstance(value, str | bool | int | float) or value is None else str(value)


def _sorted(values: Sequence[Any]) -> list[Any]:
    try:
        return sorted(values)
    except TypeError:
        return sorted(values, key=str)


def plan_target(
    dtype: Any, distinct: Sequence[Any], *, target: str, requested: str = "auto", rows_dropped: int = 0
) -> TargetEncoding:
    """The task and classes of a target column of ``dtype`` whose non-missing distinct values are
    ``distinct``; :class:`UserError` when the column cannot pose the ``requested`` task."""
    if requested not in TASK_REQUESTS:
        raise UserError(f"unknown task {requested!r}: expected one of {', '.join(TASK_REQUESTS)}")
    values = [_json_scalar(v) if isinstance(v, np.generic) else v for v in distinct if not _is_missing(v)]
    count = len(values)
    dropped = f" (after dropping {rows_dropped} rows with a missing target)" if rows_dropped else ""
    numeric = ptypes.is_numeric_dtype(dtype) and not ptypes.is_bool_dtype(dtype)
    whole = numeric and all(float(v).is_integer() for v in values if isinstance(v, int | float))
    described = f"target column {target!r} ({dtype}, {count} distinct value{'s' if count != 1 else ''}{dropped})"
    if count < 2:
        raise UserError(f"{described}: a target needs at least 2 distinct values to learn anything")
    if requested == "regression":
        if not numeric:
            raise UserError(f"{described}: task regression needs a numeric target")
        return TargetEncoding("regression", (), "dataset.task says regression")
    if requested == "auto" and numeric and not (whole and count <= MAX_AUTO_CLASSES):
        why = "not all whole numbers" if not whole else f"more than {MAX_AUTO_CLASSES} whole-number values"
        return TargetEncoding("regression", (), f"inferred: a numeric target with {count} distinct values ({why})")
    if count > MAX_CLASSES:
        raise UserError(f"{described}: more than {MAX_CLASSES} classes; a numeric quantity needs task regression")
    task: Task = "binary" if count == 2 else "multiclass"
    if requested not in ("auto", task):
        need = "exactly 2 classes" if requested == "binary" else "at least 3 classes (2 are a binary task)"
        raise UserError(f"{described}: task {requested} needs {need}; set dataset.task to {task} or auto")
    if requested == "auto":
        kind = "whole-number" if numeric else "boolean" if ptypes.is_bool_dtype(dtype) else "categorical"
        reason = f"inferred: a {kind} target with {count} distinct values"
    else:
        reason = f"dataset.task says {task}"
    return TargetEncoding(task, tuple(_sorted(values)), reason)


def plan_target_of(column: pd.Series, *, requested: str = "auto", rows_dropped: int = 0) -> TargetEncoding:
    """:func:`plan_target` of a whole (missing-free) column."""
    return plan_target(
        column.dtype, list(column.unique()), target=str(column.name), requested=requested, rows_dropped=rows_dropped
    )


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False
