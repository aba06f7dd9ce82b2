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


HOSTILE_STEPS = {
    1: "a unit no trial has",
    2: "a step past shared.records.MAX_STEPS",
    3: "steps that go backwards",
    4: "a fold report where the spec asks for rounds",
}
"""``max_depth`` -> how :func:`stepped_trial` misreports (the others report correctly)."""


def stepped_trial(
    *,
    params: dict[str, Any],
    primary_metric: str,
    on_fold: Callable[..., None] | None = None,
    report_every: int | None = None,
    **_: Any,
) -> dict[str, Any]:
    """A trial in steps of ``report_every`` rounds up to ``num_boost_round`` (as ``run_trial`` reports
    them); value ``0.5 + max_depth / 100``; a ``max_depth`` of :data:`HOSTILE_STEPS` misreports."""
    rounds, every, depth = int(params["num_boost_round"]), int(report_every or 1), int(params["max_depth"])
    final = 0.5 + depth / 100
    steps = [*range(every, rounds, every), rounds]
    if depth == 3:
        steps = steps[::-1]
    for position, step in enumerate(steps):
        time.sleep(0.01)
        running = {primary_metric: final - 0.001 * (len(steps) - position - 1)}
        mark: Any = {"unit": "bogus" if depth == 1 else "round", "last": position == len(steps) - 1}
        if depth == 4:
            mark = {"scores": running, "fit_seconds": 0.0, "predict_seconds": 0.0, "split": ""}
        if on_fold is not None:
            on_fold(10**9 if depth == 2 else step, running, mark)
    return {primary_metric: final, "engine": "scripted", "step_unit": "round", "last_step": rounds}


def sized_trial(*, params: dict[str, Any], primary_metric: str, measure: bool = False, **_: Any) -> dict[str, Any]:
    """A trial of two objectives in tension: ``max_features`` is the accuracy and the model grows with it
    (``model_size_mb = 100 * max_features``, measured only when asked, as ``run_trial`` does)."""
    quality = float(params["max_features"])
    metrics: dict[str, Any] = {primary_metric: quality, "engine": "scripted"}
    if measure:
        metrics.update(model_size_mb=100.0 * quality, predict_ms_per_1000_rows=1.0 + params["n_estimators"] / 10)
    return metrics
