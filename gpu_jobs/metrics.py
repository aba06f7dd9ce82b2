"""The learning tasks, their metrics with their natural directions, and the one scoring function.

A trial scores each validation fold here, on host NumPy arrays, whichever engine trained the model
(cuML/XGBoost-on-CUDA predictions are copied to the host first: one fold's predictions are small). So a
metric is computed by exactly one piece of code on both engines, single process or Dask, and a GPU
trial's number means what a CPU trial's means.

The metrics are computed with NumPy: scikit-learn's functions validate their inputs at
about 2 ms a call, which more than doubled a trial that reports every ten boosting rounds on a small table
(flights' 3,000 rows: 1.15 s against 0.48 s without steps; now 0.60 s). Each is scikit-learn's
definition, checked against its function by ``tests/test_metrics_numpy.py`` (Hypothesis, ties included); a
degenerate fold (one class only, a class missing, one row) is scored by scikit-learn itself
(:data:`BY_SKLEARN`), so it means what it meant.

What :func:`score` takes as ``prediction``, per task (what :mod:`gpu_jobs.trainers` predict):

* ``binary``: the positive class's probability, shape ``(n,)``; labels 0/1;
* ``multiclass``: one probability column per class, shape ``(n, K)``; labels ``0..K-1``;
* ``regression``: the predicted values, shape ``(n,)``; labels the true values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import numpy as np

# NumPy is imported where a fold is scored, not here: the control plane imports this module's tables (the
# spec validates metrics against them) and the Function App has no NumPy (tests/test_functions_worker.py).

Task = Literal["binary", "multiclass", "regression"]
TASKS: tuple[Task, ...] = ("binary", "multiclass", "regression")
TASK_REQUESTS: tuple[str, ...] = ("auto", *TASKS)
Direction = Literal["maximize", "minimize"]

PROBABILITY_EPSILON = 1e-15
"""Probabilities are clipped to ``[eps, 1 - eps]`` before log loss."""

TASK_METRICS: dict[Task, dict[str, Direction]] = {
    "binary": {
        "accuracy": "maximize",
        "roc_auc": "maximize",
        "log_loss": "minimize",
        "f1": "maximize",
        "precision": "maximize",
        "recall": "maximize",
        "average_precision": "maximize",
    },
    "multiclass": {
        "accuracy": "maximize",
        "log_loss": "minimize",
        "f1_macro": "maximize",
        "roc_auc_ovr": "maximize",
    },
    "regression": {"rmse": "minimize", "mae": "minimize", "r2": "maximize", "mape": "minimize"},
}
"""Every metric a trial of each task reports, with its natural direction (the first is the default)."""

METRICS: dict[str, Direction] = {name: d for metrics in TASK_METRICS.values() for name, d in metrics.items()}
"""Every metric name of any task, with its direction (a name shared by two tasks has one direction)."""

METRIC_ALIASES: dict[str, str] = {
    "auc": "roc_auc",
    "root_mean_squared_error": "rmse",
    "mean_absolute_error": "mae",
    "r2_score": "r2",
    "mean_absolute_percentage_error": "mape",
    "f1_score": "f1",
    "f1_score_macro": "f1_macro",
    "average_precision_score": "average_precision",
}
"""Longer spellings (AzureML AutoML's and scikit-learn's) of the metrics above, lower-cased."""

MEASURED_METRICS: dict[str, Direction] = {"model_size_mb": "minimize", "predict_ms_per_1000_rows": "minimize"}
"""What a trial measures of its model when asked (``run_trial(measure=True)``): the last fold's portable model
serialized (XGBoost's UBJSON, a forest's pickle) in MB, and prediction time per 1,000 validation rows in
milliseconds (every fold's predictions). Objectives and constraints may name these besides the task's metrics."""

POSITIVE_METRICS: frozenset[str] = frozenset(METRICS) - {"r2"}
"""Metrics that are never negative (Bandit's ``slack_factor`` is a ratio and needs one of these)."""


def default_metric(task: Task) -> str:
    """The metric a spec of ``task`` ranks by when it names none."""
    return next(iter(TASK_METRICS[task]))


def tasks_of(metric: str) -> list[Task]:
    """The tasks that report ``metric``."""
    return [task for task, metrics in TASK_METRICS.items() if metric in metrics]


def metric_mismatch(metric: str, task: Task) -> str | None:
    """Why ``metric`` cannot rank trials of ``task`` (naming the metrics that can), or None when it fits."""
    if metric in TASK_METRICS[task]:
        return None
    return f"{metric} is not a {task} metric; a {task} task reports: {', '.join(TASK_METRICS[task])}"


def _clipped(proba: np.ndarray) -> np.ndarray:
    import numpy as np

    clipped: np.ndarray = np.clip(proba, PROBABILITY_EPSILON, 1.0 - PROBABILITY_EPSILON)
    return clipped


def _binary(labels: np.ndarray, positive: np.ndarray) -> dict[str, float]:
    import numpy as np

    truth = labels == 1
    positives = int(truth.sum())
    if positives in (0, len(truth)) or not np.isin(labels, (0, 1)).all():
        return _binary_by_sklearn(labels, positive)  # a degenerate fold: scikit-learn says what it means
    predicted = positive >= 0.5
    tp, fp = int((predicted & truth).sum()), int((predicted & ~truth).sum())
    fn = positives - tp
    clipped = _clipped(positive)
    return {
        "accuracy": float(np.mean(predicted == truth)),
        "roc_auc": _auc(truth, positive),
        "log_loss": float(-np.mean(np.where(truth, np.log(clipped), np.log(1.0 - clipped)))),
        "f1": 2 * tp / (2 * tp + fp + fn) if tp else 0.0,
        "precision": tp / (tp + fp) if tp else 0.0,
        "recall": tp / positives,
        "average_precision": _average_precision(truth, positive),
    }


def _auc(truth: np.ndarray, score: np.ndarray) -> float:
    """The area under the ROC curve as the Mann-Whitney statistic (ties count one half: average ranks);
    both classes present."""
    import numpy as np

    positives = int(truth.sum())
    negatives = len(truth) - positives
    order = np.argsort(score, kind="mergesort")
    starts = np.r_[0, np.flatnonzero(np.diff(score[order])) + 1]  # where each run of equal scores begins
    ends = np.r_[starts[1:], len(score)]
    ranks = np.empty(len(score))
    ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)  # 1-based, a tie's average
    return float((ranks[truth].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def _average_precision(truth: np.ndarray, score: np.ndarray) -> float:
    """Precision at each distinct threshold (highest first) weighted by the recall it adds: scikit-learn's
    step-wise average precision; at least one positive."""
    import numpy as np

    order = np.argsort(score, kind="mergesort")[::-1]
    ranked, hits = score[order], truth[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]
    true_positives = np.cumsum(hits)[last_of_tie]
    precision = true_positives / (last_of_tie + 1)
    recall_gained = np.diff(true_positives, prepend=0) / true_positives[-1]
    return float(np.sum(recall_gained * precision))


def _binary_by_sklearn(labels: np.ndarray, positive: np.ndarray) -> dict[str, float]:
    import numpy as np
    from sklearn import metrics as m

    predicted = (positive >= 0.5).astype(np.int32)
    return {
        "accuracy": m.accuracy_score(labels, predicted),
        "roc_auc": m.roc_auc_score(labels, positive),
        "log_loss": m.log_loss(labels, _clipped(positive), labels=[0, 1]),
        "f1": m.f1_score(labels, predicted, zero_division=0.0),
        "precision": m.precision_score(labels, predicted, zero_division=0.0),
        "recall": m.recall_score(labels, predicted, zero_division=0.0),
        "average_precision": m.average_precision_score(labels, positive),
    }


def _multiclass(labels: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    import numpy as np

    classes = proba.shape[1]
    true_counts = np.bincount(labels, minlength=classes) if labels.min(initial=0) >= 0 else np.zeros(0)
    if len(true_counts) != classes or not true_counts.all():
        return _multiclass_by_sklearn(labels, proba)  # a class missing from the fold, or an unknown one
    clipped = _normalized(proba)  # clipped, then renormalised: log loss needs rows that sum to one
    predicted = proba.argmax(axis=1)
    hits = predicted == labels
    true_positives = np.bincount(labels[hits], minlength=classes)
    predicted_counts = np.bincount(predicted, minlength=classes)
    f1 = 2 * true_positives / (predicted_counts + true_counts)
    return {
        "accuracy": float(np.mean(hits)),
        "log_loss": float(-np.mean(np.log(clipped[np.arange(len(labels)), labels]))),
        "f1_macro": float(np.mean(f1)),
        "roc_auc_ovr": float(np.mean([_auc(labels == k, clipped[:, k]) for k in range(classes)])),
    }


def _multiclass_by_sklearn(labels: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    from sklearn import metrics as m

    classes = list(range(proba.shape[1]))
    predicted = proba.argmax(axis=1)
    clipped = _normalized(proba)
    return {
        "accuracy": m.accuracy_score(labels, predicted),
        "log_loss": m.log_loss(labels, clipped, labels=classes),
        "f1_macro": m.f1_score(labels, predicted, average="macro", labels=classes, zero_division=0.0),
        "roc_auc_ovr": m.roc_auc_score(labels, clipped, multi_class="ovr", average="macro", labels=classes),
    }


def _regression(values: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    import numpy as np

    if len(values) < 2:
        return _regression_by_sklearn(values, predicted)  # R2 is not defined on one row: scikit-learn's answer
    error = values - predicted
    squared = float(np.sum(error**2))
    spread = float(np.sum((values - np.mean(values)) ** 2))
    return {
        "rmse": float(np.sqrt(squared / len(values))),
        "mae": float(np.mean(np.abs(error))),
        "r2": 1.0 - squared / spread if spread else (1.0 if squared == 0 else 0.0),
        "mape": float(np.mean(np.abs(error) / np.maximum(np.abs(values), np.finfo(np.float64).eps))),
    }


def _regression_by_sklearn(values: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    import numpy as np
    from sklearn import metrics as m

    return {
        "rmse": float(np.sqrt(m.mean_squared_error(values, predicted))),
        "mae": m.mean_absolute_error(values, predicted),
        "r2": m.r2_score(values, predicted),
        "mape": m.mean_absolute_percentage_error(values, predicted),
    }


BY_SKLEARN: Mapping[Task, Callable[[np.ndarray, np.ndarray], Mapping[str, Any]]] = {
    "binary": _binary_by_sklearn,
    "multiclass": _multiclass_by_sklearn,
    "regression": _regression_by_sklearn,
}
"""The same metrics by scikit-learn's functions: what a degenerate fold gets, and the tests' oracle."""


def _normalized(proba: np.ndarray) -> np.ndarray:
    clipped = _clipped(proba)
    normalized: np.ndarray = clipped / clipped.sum(axis=1, keepdims=True)
    return normalized


_SCORERS: Mapping[Task, Callable[[np.ndarray, np.ndarray], Mapping[str, Any]]] = {
    "binary": _binary,
    "multiclass": _multiclass,
    "regression": _regression,
}


def score(task: Task, labels: Any, prediction: Any) -> dict[str, float]:
    """Every metric of ``task`` for one validation fold (host arrays; see the module docstring)."""
    import numpy as np

    dtype = np.float64
    truth = np.asarray(labels, dtype=dtype if task == "regression" else np.int64).reshape(-1)
    predicted = np.asarray(prediction, dtype=dtype)
    if task != "multiclass":
        predicted = predicted.reshape(-1)
    if len(truth) != len(predicted):
        raise ValueError(f"{len(truth)} labels but {len(predicted)} predictions")
    finite = bool(np.isfinite(predicted).all() and (task != "regression" or np.isfinite(truth).all()))
    scorer = _SCORERS[task] if finite else BY_SKLEARN[task]  # NaN or infinity: scikit-learn refuses it, as before
    return {name: float(value) for name, value in scorer(truth, predicted).items()}
