"""A trial that does no work: each of its folds scores a value drawn from its parameters and reports it,
so a bench measures only what the HPO engine itself costs per trial and per fold (``bench/hpo_overhead.py
--noop``, ``bench/large_experiment.py``). Importable on Dask workers (it lives in a module, not __main__)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any


def fold_value(params: Mapping[str, Any], step: int) -> float:
    return float(params.get("max_features", 0.5)) - 0.01 * step


def noop_trial(
    *,
    params: dict[str, Any],
    cv_folds: int,
    primary_metric: str,
    on_fold: Callable[..., None] | None = None,
    completed_folds: Sequence[Mapping[str, Any]] = (),
    **_: Any,
) -> dict[str, Any]:
    values: list[float] = []
    for step in range(1, cv_folds + 1):
        value = fold_value(params, step)
        values.append(value)
        if on_fold is not None:
            fold = {"scores": {primary_metric: value}, "fit_seconds": 0.0, "split": f"noop-{step}"}
            on_fold(step, {primary_metric: sum(values) / len(values)}, fold)
    return {primary_metric: sum(values) / len(values)}
