"""How a retried trial resumes: which folds of its interrupted attempt it keeps, and how reports extend them.

A fold is kept only in order (steps 1, 2, ... without a gap) and only once the driver let the trial go on
after it (a fold the trial was pruned at is not kept, so a retry is asked about it again). The worker
checks each kept fold against the split it draws (``gpu_jobs.cross_validation.split_fingerprint``) and
trains any that does not match.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import optuna

from shared.bounded import MAX_ENTRIES, MAX_NAME
from shared.records import FoldResult, TrialRecord, TrialState, utcnow

TASK_FOLD_FIELDS = {"scores", "fit_seconds", "predict_seconds", "split"}
"""What a trial task gets of each kept fold (``gpu_jobs.cross_validation.FoldRecord``'s keys)."""


def resumable_folds(record: TrialRecord) -> list[FoldResult]:
    """The leading folds ``record`` finished, steps 1, 2, ... without a gap (what a retry may skip)."""
    folds: list[FoldResult] = []
    for fold in record.folds:
        if fold.step != len(folds) + 1:
            break
        folds.append(fold)
    return folds


def retry_record(interrupted: TrialRecord) -> TrialRecord:
    """The next attempt of an interrupted trial: RUNNING again, with the folds and running means it keeps."""
    folds = resumable_folds(interrupted)
    return interrupted.model_copy(
        update={
            "attempt": interrupted.attempt + 1,
            "state": TrialState.RUNNING,
            "error": None,
            "intermediate": {step: v for step, v in interrupted.intermediate.items() if step <= len(folds)},
            "folds": folds,
            "resumed_folds": 0,
            "started_at": utcnow(),
            "ended_at": None,
            "duration_s": None,
        }
    )


def task_folds(record: TrialRecord) -> tuple[dict[str, Any], ...]:
    """The kept folds as a trial task takes them."""
    return tuple(fold.model_dump(include=TASK_FOLD_FIELDS) for fold in record.folds)


def resumed_seconds(record: TrialRecord) -> float:
    """The worker time the kept folds took (fit and predict): it counts against ``trial_timeout``."""
    return sum(fold.fit_seconds + fold.predict_seconds for fold in record.folds)


def with_fold(record: TrialRecord, step: int, fold: Any) -> list[FoldResult] | None:
    """``record.folds`` extended by the fold a report carried (replacing a kept fold trained again), or
    None when the report carries none or it does not follow the folds recorded."""
    if not isinstance(fold, Mapping):
        return None
    folds = record.folds[: step - 1]
    if len(folds) != step - 1:
        return None
    try:
        folds.append(FoldResult(step=step, attempt=record.attempt, **fold))
    except (TypeError, ValueError):
        return None
    return folds


def optuna_attrs(study: optuna.Study, trial: optuna.Trial) -> dict[str, float]:
    """The numbers Optuna keeps with ``trial`` as system attributes (successive halving's
    ``completed_rung_<k>`` values, the grid sampler's ``grid_id``), for its record: a restarted driver gives
    them back to the rebuilt study (``create_trial(system_attrs=...)``, or to the retry's trial), so its next
    decisions are the ones an uninterrupted run makes. Attributes that are not numbers (``fixed_params`` of
    a retried trial) are left out: the record rebuilds those itself."""
    attrs = study._storage.get_trial_system_attrs(trial._trial_id)
    numbers = {
        key: float(value)
        for key, value in sorted(attrs.items())
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        and len(key) <= MAX_NAME
    }  # fmt: skip
    return dict(list(numbers.items())[:MAX_ENTRIES])
