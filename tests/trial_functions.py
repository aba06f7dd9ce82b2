"""Scripted trial functions with ``gpu_jobs.train.run_trial``'s signature, for engine tests.

The engine's contract is about any trial function; these make its behaviour controllable (value,
duration, failure, hang) through the hyperparameters, so limits, pruning, timeouts and failures can be
checked in seconds. They run on real Dask workers, imported by reference like the real one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def scripted_trial(
    *,
    params: dict[str, Any],
    cv_folds: int,
    primary_metric: str,
    on_fold: Callable[..., None] | None = None,
    completed_folds: Sequence[Mapping[str, Any]] = (),
    **_: Any,
) -> dict[str, Any]:
    """Final value = ``max_features``; each fold takes ``n_estimators`` ms; ``max_depth == 13`` fails;
    ``min_samples_leaf == 7`` hangs for a minute inside the first fold. Resumes as ``run_trial`` does:
    leading ``completed_folds`` whose split (``scripted-<step>``) matches are taken, not slept through."""
    if params.get("max_depth") == 13:
        raise ValueError("max_depth=13 is cursed (scripted failure)")
    final = float(params["max_features"])
    folds: list[float] = []
    taken = 0
    for step in range(1, cv_folds + 1):
        split = f"scripted-{step}"
        if taken == step - 1 and taken < len(completed_folds) and completed_folds[taken].get("split") == split:
            folds.append(float(completed_folds[taken]["scores"][primary_metric]))
            taken += 1
            continue
        if params.get("min_samples_leaf") == 7:
            time.sleep(60)
        tick = time.perf_counter()
        time.sleep(params.get("n_estimators", 10) / 1000)
        value = final - 0.01 * (cv_folds - step)
        folds.append(value)
        if on_fold is not None:
            fold = {"scores": {primary_metric: value}, "fit_seconds": time.perf_counter() - tick}
            on_fold(step, {primary_metric: sum(folds) / len(folds)}, {**fold, "predict_seconds": 0.0, "split": split})
    return {primary_metric: final, "engine": "scripted", "fold_scores": {primary_metric: folds}, "resumed_folds": taken}
