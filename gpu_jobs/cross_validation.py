"""What every trial shares however it trains: the checked request, fold bookkeeping and MLflow logging.

Used by :func:`gpu_jobs.trial.run_trial` (one process) and :func:`gpu_jobs.dask_training.run_distributed`
(a Dask cluster); they differ only in how a fold is trained and predicted.

How folds are drawn (so numbers from different paths can be compared knowingly):

* one process, either engine: scikit-learn's ``StratifiedKFold(shuffle=True, random_state=seed)`` on the
  labels (``KFold`` for a regression; on the host, also for the GPU engine), so the CPU and GPU engines
  validate on the *same* rows;
* a Dask cluster: a stratified, seeded fold column drawn per partition
  (:func:`gpu_jobs.dask_table.stratified_fold_column`): the same class shares per fold, other rows.

Every fold is scored by :func:`gpu_jobs.metrics.score` (all metrics of the trial's task), on the host.

Resuming: each fold reported to ``on_fold`` comes with a :class:`FoldRecord` (its scores, timings and a
fingerprint of its validation rows). A retried trial given the records of the folds an earlier attempt
finished (``completed_folds``) takes each one whose fingerprint matches the fold drawn now instead of
training it again, in order, and stops taking them at the first that does not match. Only the
single-process path fingerprints its folds; the Dask path's depend on the partitioning (the worker
count), so it always trains every fold.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

import numpy as np

from gpu_jobs.engine import ENGINE_REQUESTS, get_engine
from gpu_jobs.errors import UserError
from gpu_jobs.metrics import METRICS, TASK_METRICS, Task, metric_mismatch
from gpu_jobs.params import HYPERPARAMETERS, MODELS, validate_params
from gpu_jobs.steps import check_report_every
from gpu_jobs.target import TargetEncoding


class FoldRecord(TypedDict):
    """One fold as it was scored (JSON-able): what ``on_fold`` gets and what ``completed_folds`` takes back."""

    scores: dict[str, float]
    fit_seconds: float
    predict_seconds: float
    split: str
    """Fingerprint of the fold's validation rows (:func:`split_fingerprint`); "" where none is drawn."""


class StepMark(TypedDict):
    """What ``on_fold`` gets in place of a fold for a step inside the folds (``report_every``)."""

    unit: str
    """``round``, ``tree`` or ``percent`` (:mod:`gpu_jobs.steps`)."""
    last: bool
    """The trial's last step: its work is done."""


FoldCallback = Callable[[int, dict[str, float], FoldRecord | StepMark], None]
"""``on_fold(step, running_means, fold)``: the step (1-based fold, or rounds, trees or percent so far with
``report_every``), running means of every metric, the fold itself (or a :class:`StepMark`)."""
SINGLE_PROCESS_FOLDS = "stratified k-fold (scikit-learn StratifiedKFold, shuffled with the seed)"
SINGLE_PROCESS_REGRESSION_FOLDS = "k-fold (scikit-learn KFold, shuffled with the seed)"
DISTRIBUTED_FOLDS = "k-fold over a stratified, seeded random fold column (drawn per partition)"


def single_process_folds(task: Task) -> str:
    """How a single-process trial of ``task`` draws its folds (recorded in the metrics)."""
    return SINGLE_PROCESS_REGRESSION_FOLDS if task == "regression" else SINGLE_PROCESS_FOLDS


@dataclass(frozen=True)
class TrialRequest:
    """The checked arguments of one trial (shared by the single-node and distributed paths)."""

    model: str
    params: dict[str, float | int]
    cv_folds: int
    primary_metric: str
    engine_request: str
    report_every: int | None = None
    """Report every this many rounds or trees, all folds in lockstep (:mod:`gpu_jobs.steps`); None: per fold."""


def check_request(
    *,
    model: str,
    params: Mapping[str, float],
    cv_folds: int,
    primary_metric: str,
    engine: str,
    report_every: int | None = None,
) -> TrialRequest:
    """Validate everything that needs no data; :class:`UserError` naming the first problem."""
    if model not in MODELS:
        raise UserError(f"unknown model {model!r}: expected one of {', '.join(MODELS)}")
    try:
        checked = validate_params(model, dict(params))
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if isinstance(cv_folds, bool) or not isinstance(cv_folds, int) or cv_folds < 2:
        raise UserError(f"cv_folds must be an integer >= 2, got {cv_folds!r}")
    if primary_metric not in METRICS:
        raise UserError(f"unknown primary metric {primary_metric!r}: expected one of {', '.join(METRICS)}")
    if engine not in ENGINE_REQUESTS:
        raise UserError(f"unknown engine {engine!r}: expected one of {', '.join(ENGINE_REQUESTS)}")
    return TrialRequest(model, checked, cv_folds, primary_metric, engine, check_report_every(report_every))


def require_fit(request: TrialRequest, target: TargetEncoding, minority_class_rows: int) -> None:
    """What the data must offer the request: a primary metric of its task, and every class in every fold
    (the rarest class needs at least one row per fold; a regression at least one row per fold).
    :class:`UserError` naming the problem, never a data value."""
    mismatch = metric_mismatch(request.primary_metric, target.task)
    if mismatch is not None:
        raise UserError(f"objective.primary_metric: {mismatch} (the task was {target.reason})")
    if minority_class_rows < request.cv_folds:
        what = "the table has" if target.task == "regression" else "the rarest target class has"
        raise UserError(
            f"{what} only {minority_class_rows} row(s): too few for {request.cv_folds}-fold "
            "cross-validation (use more rows or fewer folds)"
        )


def ignored_params(model: str, engine_name: str) -> set[str]:
    """Hyperparameters of ``model`` that the engine's library has no use for (``n_bins`` on CPU forests)."""
    if model == "random_forest" and engine_name == "cpu":
        return set(get_engine("cpu").random_forest_ignored_params) & set(HYPERPARAMETERS[model])
    return set()


def rerun_arguments(
    request: TrialRequest,
    *,
    data: str,
    target: str,
    seed: int,
    max_rows: int | None,
    task: str,
    features: Sequence[str] | None = None,
) -> dict[str, Any]:
    """What ``params.json`` records about a trial: the arguments that run it again."""
    return {
        "data": data,
        "target": target,
        "task": task,
        "model": request.model,
        "params": request.params,
        "cv_folds": request.cv_folds,
        "seed": seed,
        "max_rows": max_rows,
        "features": None if features is None else list(features),
        "primary_metric": request.primary_metric,
    }


def split_fingerprint(valid_rows: np.ndarray, labels: np.ndarray) -> str:
    """A digest of one fold's validation rows (positions and labels) among ``len(labels)`` rows: the same
    seed, data and fold count give the same digest on every engine and every retry."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(np.int64(len(labels)).tobytes())
    digest.update(np.ascontiguousarray(valid_rows, dtype=np.int64).tobytes())
    kind = np.float64 if labels.dtype.kind == "f" else np.int64  # regression values, or class codes
    digest.update(np.ascontiguousarray(labels[valid_rows], dtype=kind).tobytes())
    return digest.hexdigest()


def running_means(fold_scores: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """Mean of each metric over the folds scored so far."""
    return {name: float(np.mean(scores)) for name, scores in fold_scores.items()}


class _MlflowTracking:
    """Logs the primary metric's running mean per fold (``step``), then final metrics, to MLflow."""

    def __init__(self, mlflow: Any, primary_metric: str, final_step: int, metric_names: Sequence[str]) -> None:
        self.mlflow = mlflow
        self.primary_metric = primary_metric
        self.final_step = final_step
        self.metric_names = tuple(metric_names)

    def log_step(self, step: int, running: Mapping[str, float]) -> None:
        self.mlflow.log_metric(self.primary_metric, running[self.primary_metric], step=step)

    def log_final(self, metrics: Mapping[str, Any]) -> None:
        # The primary metric's last step already equals its final mean: not logged twice.
        final = {name: float(metrics[name]) for name in self.metric_names if name != self.primary_metric}
        final.update({name: float(metrics[name]) for name in ("fit_seconds", "predict_seconds")})
        self.mlflow.log_metrics(final, step=self.final_step)


class CrossValidation:
    """Fold scores and timings of one trial; reports each fold to MLflow and to the caller's ``on_fold``."""

    def __init__(self, request: TrialRequest, on_fold: FoldCallback | None, task: Task = "binary") -> None:
        self.request = request
        self.on_fold = on_fold
        self.task = task
        self.metric_names: tuple[str, ...] = tuple(TASK_METRICS[task])
        self.fold_scores: dict[str, list[float]] = {name: [] for name in self.metric_names}
        self.fit_seconds = 0.0
        self.predict_seconds = 0.0
        self.resumed = 0
        """Folds taken from ``completed_folds`` instead of trained (always the first ones)."""
        self.stopped_by_caller = False
        self.mlflow: _MlflowTracking | None = None

    @property
    def step(self) -> int:
        """Folds scored so far (resumed ones included)."""
        return len(self.fold_scores[self.metric_names[0]])

    def resumable(self, completed: Sequence[Mapping[str, Any]], split: str) -> Mapping[str, Any] | None:
        """The earlier attempt's record of the next fold, if it may stand for training it: every fold
        before it was resumed too, and it was scored on the same validation rows (``split``)."""
        index = self.step
        if not split or self.resumed != index or index >= len(completed):
            return None
        fold = completed[index]
        scores = fold.get("scores")
        if fold.get("split") != split or not isinstance(scores, Mapping):
            return None
        values = [scores.get(name) for name in self.metric_names]
        if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            return None
        return fold

    def resume(self, fold: Mapping[str, Any]) -> None:
        """Add a fold an earlier attempt scored (from :meth:`resumable`): its scores count as if trained
        now and its step is logged to MLflow; ``on_fold`` is not called (the caller already saw it) and
        its timings are not this run's (``fit_seconds`` counts only folds trained here)."""
        for name in self.metric_names:
            self.fold_scores[name].append(float(fold["scores"][name]))
        self.resumed += 1
        if self.mlflow is not None:
            self.mlflow.log_step(self.step, running_means(self.fold_scores))

    def record(
        self,
        scores: Mapping[str, float],
        *,
        fit_seconds: float,
        predict_seconds: float,
        split: str = "",
        report: bool = True,
    ) -> None:
        """Add one fold's scores; with ``report`` (a fold is the step) log the running primary metric and call
        ``on_fold`` (its errors propagate)."""
        for name in self.metric_names:
            self.fold_scores[name].append(float(scores[name]))
        self.fit_seconds += fit_seconds
        self.predict_seconds += predict_seconds
        if not report:
            return
        fold = FoldRecord(
            scores={name: float(scores[name]) for name in self.metric_names},
            fit_seconds=float(fit_seconds),
            predict_seconds=float(predict_seconds),
            split=split,
        )
        self.report_step(self.step, running_means(self.fold_scores), fold)

    def report_step(self, step: int, running: Mapping[str, float], fold: FoldRecord | StepMark) -> None:
        """Log the running primary metric at ``step`` and call ``on_fold`` (its errors propagate)."""
        if self.mlflow is not None:
            self.mlflow.log_step(step, running)
        if self.on_fold is not None:
            try:
                self.on_fold(step, dict(running), fold)
            except BaseException:
                self.stopped_by_caller = True
                raise

    def metrics(self, *, engine_name: str, rows: int, rows_dropped: int, n_features: int, folds: str) -> dict[str, Any]:
        """The result dict (without outputs): fold means, per-fold scores, timings and what ran."""
        return {
            **running_means(self.fold_scores),
            "fold_scores": self.fold_scores,
            "fit_seconds": self.fit_seconds,
            "predict_seconds": self.predict_seconds,
            "resumed_folds": self.resumed,
            "rows": rows,
            "rows_dropped_missing_target": rows_dropped,
            "n_features": n_features,
            "engine": engine_name,
            "model": self.request.model,
            "params": self.request.params,
            "primary_metric": self.request.primary_metric,
            "task": self.task,
            "cv_folds": self.request.cv_folds,
            "evaluation": folds,
            "ignored_params": sorted(ignored_params(self.request.model, engine_name)),
        }

    def finish(self, metrics: Mapping[str, Any]) -> None:
        if self.mlflow is not None:
            self.mlflow.log_final(metrics)


@contextlib.contextmanager
def cross_validation(
    request: TrialRequest,
    *,
    engine_name: str,
    seed: int,
    on_fold: FoldCallback | None,
    task: Task = "binary",
    final_step: int | None = None,
) -> Iterator[CrossValidation]:
    """A :class:`CrossValidation`, with MLflow logging when ``MLFLOW_TRACKING_URI`` is set.

    A run is started unless one is active (``MLFLOW_RUN_ID``, e.g. an AzureML job's run, is attached to,
    not ended). Params are logged up front so pruned trials keep them; a run started here ends KILLED
    when the caller stopped the trial through ``on_fold``, FAILED on any other error.
    """
    folds = CrossValidation(request, on_fold, task)
    final_step = request.cv_folds if final_step is None else final_step
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        yield folds
        return
    import mlflow

    started_here = mlflow.active_run() is None
    if started_here:
        mlflow.start_run()
    end_run = started_here and not os.environ.get("MLFLOW_RUN_ID")
    status = "FINISHED"
    try:
        logged = {
            "model": request.model,
            "engine": engine_name,
            "cv_folds": request.cv_folds,
            "seed": seed,
            "task": task,
            **({"report_every": request.report_every} if request.report_every else {}),
        }
        mlflow.log_params({**request.params, **logged})
        folds.mlflow = _MlflowTracking(mlflow, request.primary_metric, final_step, folds.metric_names)
        yield folds
    except BaseException:
        status = "KILLED" if folds.stopped_by_caller else "FAILED"
        raise
    finally:
        if end_run:
            mlflow.end_run(status=status)
