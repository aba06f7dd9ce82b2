"""The data check an experiment runs once, on the compute, before any trial.

It reads the table as a trial would (the same loader, so the data also lands in the worker's cache),
learns the task from the target (:mod:`gpu_jobs.target`), and checks what every trial would otherwise
find out for itself, each time: the file is there and readable, the target column exists, the target
poses the requested task, the primary metric is one of that task's, and every class can reach every fold.
A problem is one :class:`UserError`, in words that name columns, types and counts, never a data value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

from gpu_jobs.cross_validation import check_request, require_fit
from gpu_jobs.data import load_dataset
from gpu_jobs.engine import resolve_engine
from gpu_jobs.params import HYPERPARAMETERS


class DataCheck(TypedDict):
    """What the check learned (JSON-able; the control plane reads it as ``shared.records.DataCheckReport``)."""

    task: str
    task_reason: str
    classes: int
    """Number of target classes (0 for a regression)."""
    rows: int
    rows_dropped_missing_target: int
    features: int


def check_data(
    *,
    data: str,
    target: str,
    task: str,
    model: str,
    primary_metric: str,
    cv_folds: int,
    engine: str = "auto",
    data_format: str | None = None,
    max_rows: int | None = None,
    seed: int = 0,
    features: Sequence[str] | None = None,
) -> DataCheck:
    """Load the data as the experiment's trials will and check they can run; :class:`UserError` if not."""
    defaults = {name: hp.default for name, hp in HYPERPARAMETERS.get(model, {}).items()}
    request = check_request(
        model=model, params=defaults, cv_folds=cv_folds, primary_metric=primary_metric, engine=engine
    )
    engine_name = resolve_engine(engine)
    dataset = load_dataset(
        data,
        target,
        data_format=data_format,
        max_rows=max_rows,
        seed=seed,
        engine=engine_name,
        task=task,
        features=features,
    )
    info = dataset.info
    require_fit(request, info.target_encoding, info.minority_class_rows)
    return DataCheck(
        task=info.target_encoding.task,
        task_reason=info.target_encoding.reason,
        classes=info.target_encoding.n_classes,
        rows=info.rows,
        rows_dropped_missing_target=info.rows_dropped_missing_target,
        features=len(info.feature_names),
    )
