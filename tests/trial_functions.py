"""Scripted trial functions with ``gpu_jobs.train.run_trial``'s signature, for engine tests.

The engine's contract is about any trial function; these make its behaviour controllable (value,
duration, failure, hang) through the hyperparameters, so limits, pruning, timeouts and failures can be
checked in seconds. They run on real Dask workers, imported by reference like the real one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def scripted_trial(
    *,
    params: dict[str, Any],
    cv_folds: int,
    primary_metric: str,
    on_fold: Callable[[int, dict[str, float]], None] | None = None,
    **_: Any,
) -> dict[str, Any]:
    """Final value = ``max_features``; each fold takes ``n_estimators`` ms; ``max_depth == 13`` fails;
    ``min_samples_leaf == 7`` hangs for a minute inside the first fold."""
    if params.get("max_depth") == 13:
        raise ValueError("max_depth=13 is cursed (scripted failure)")
    final = float(params["max_features"])
    folds = []
    for step in range(1, cv_folds + 1):
        if params.get("min_samples_leaf") == 7:
            time.sleep(60)
        time.sleep(params.get("n_estimators", 10) / 1000)
        value = final - 0.01 * (cv_folds - step)
        folds.append(value)
        if on_fold is not None:
            on_fold(step, {primary_metric: sum(folds) / len(folds)})
    return {primary_metric: final, "engine": "scripted", "fold_scores": {primary_metric: folds}}
