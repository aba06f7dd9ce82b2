"""How a retried trial resumes: which folds of its interrupted attempt it keeps, and how reports extend them.

A fold is kept only in order (steps 1, 2, ... without a gap) and only once the driver let the trial go on
after it (a fold the trial was pruned at is not kept, so a retry is asked about it again). The worker
checks each kept fold against the split it draws (``gpu_jobs.cross_validation.split_fingerprint``) and
trains any that does not match.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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
