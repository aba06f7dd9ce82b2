"""One HPO trial in one process: K-fold cross-validation of a random forest or XGBoost, for any task.

:func:`run_trial` is what the HPO driver runs per trial (also inside a Dask worker, on a GPU or not);
:func:`fit_final_model` is the driver's refit of the best parameters on all rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from gpu_jobs import telemetry
from gpu_jobs.cross_validation import (
    CrossValidation,
    FoldCallback,
    StepMark,
    check_request,
    cross_validation,
    ignored_params,
    require_fit,
    rerun_arguments,
    single_process_folds,
    split_fingerprint,
)
from gpu_jobs.data import Dataset, load_dataset
from gpu_jobs.engine import Engine, fold_splitter, get_engine, resolve_engine
from gpu_jobs.errors import UserError
from gpu_jobs.metrics import Task
from gpu_jobs.model_files import save_outputs
from gpu_jobs.steps import GrowingTrainer, StepPlan, check_fidelity, lockstep, step_plan
from gpu_jobs.trainers import Trainer, make_trainer, model_features, model_megabytes
from gpu_jobs.worker_cache import TRIAL_CACHE


def run_trial(
    *,
    data: str,
    target: str,
    model: str,
    params: dict[str, float],
    cv_folds: int = 5,
    seed: int = 0,
    engine: str = "auto",
    output: str | Path | None = None,
    data_format: str | None = None,
    max_rows: int | None = None,
    primary_metric: str = "accuracy",
    n_jobs: int | None = None,
    on_fold: FoldCallback | None = None,
    completed_folds: Sequence[Mapping[str, Any]] = (),
    task: str = "auto",
    features: Sequence[str] | None = None,
    report_every: int | None = None,
    measure: bool = False,
    fidelity: str = "rounds",
    row_factor: int = 2,
) -> dict[str, Any]:
    """Cross-validate ``model`` with ``params`` on ``data`` and return its metrics.

    ``task`` (``auto``: inferred from the target, :mod:`gpu_jobs.target`) picks the model's kind, the
    folds (stratified for classes, plain for regression; shuffled with ``seed``, the same folds on both
    engines) and the metrics (:mod:`gpu_jobs.metrics`); ``primary_metric`` must be one of the task's. After
    each fold ``on_fold(step, running_means, fold)`` is called (1-based step; running means of every
    metric; the fold's :class:`~gpu_jobs.cross_validation.FoldRecord`) and anything it raises propagates
    at once: that is how a caller prunes or times out a trial. ``completed_folds``: the records an
    interrupted attempt of this trial reported, in order; each whose validation rows match the fold drawn
    now is taken instead of trained (no ``on_fold`` call for it; ``metrics["resumed_folds"]`` counts
    them), so the running means and the result equal an uninterrupted run's. With
    ``output``, the model is refit on all rows and saved there (see :mod:`gpu_jobs.model_files`).
    ``n_jobs`` is passed to the libraries. ``None`` inside a Dask worker means that worker's thread count
    (so concurrent trials do not oversubscribe the cores: XGBoost's OpenMP threads then spin against each
    other, measured 14x slower here); elsewhere the library default (scikit-learn 1 thread, XGBoost all).
    ``report_every``: the folds train in lockstep and ``on_fold(step, running_means, StepMark)`` is called
    every this many boosting rounds or trees instead (:mod:`gpu_jobs.steps`; ``completed_folds`` unused).
    ``fidelity: rows`` (with ``report_every``): each step refits the whole model on a growing, nested percent
    of each fold's training rows, ``report_every`` percent first, ``row_factor`` times more at each step.
    ``measure``: also ``model_size_mb`` and ``predict_ms_per_1000_rows`` (``gpu_jobs.metrics.MEASURED_METRICS``).
    """
    started = time.perf_counter()
    if n_jobs is None:
        n_jobs = dask_worker_threads()
    request = check_request(
        model=model,
        params=params,
        cv_folds=cv_folds,
        primary_metric=primary_metric,
        engine=engine,
        report_every=report_every,
    )
    rows_or_rounds = check_fidelity(fidelity, request.report_every, row_factor)
    engine_name = resolve_engine(engine)
    toolkit = get_engine(engine_name)
    dataset = read_traced(
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
    kind = info.target_encoding
    require_fit(request, kind, info.minority_class_rows)
    plan = None
    if request.report_every is not None:
        plan = step_plan(model, request.params, toolkit, request.report_every, rows_or_rounds, row_factor)
    fill = model == "random_forest" and info.missing_feature_values > 0
    matrix = TRIAL_CACHE.for_object(dataset, ("features", fill), lambda: model_arrays(model, toolkit, dataset, fill))
    labels, host_labels = TRIAL_CACHE.for_object(dataset, "labels", lambda: label_arrays(toolkit, dataset))
    splits = TRIAL_CACHE.for_object(
        dataset, ("folds", cv_folds, seed), lambda: fold_indices(toolkit, kind.task, host_labels, cv_folds, seed)
    )

    def new_trainer() -> Trainer:
        return make_trainer(
            model, toolkit, request.params, seed=seed, n_jobs=n_jobs, task=kind.task, n_classes=kind.n_classes
        )

    with cross_validation(
        request,
        engine_name=engine_name,
        seed=seed,
        on_fold=on_fold,
        task=kind.task,
        final_step=None if plan is None else plan.steps[-1],
    ) as folds:
        last: Trainer | None = None
        predicted_rows = 0
        if plan is not None:
            last, predicted_rows = in_steps(plan, folds, splits, new_trainer, matrix, labels, toolkit, kind.task)
        for number, (split, train_index, valid_index) in enumerate(splits if plan is None else (), start=1):
            earlier = folds.resumable(completed_folds, split)
            if earlier is not None:
                folds.resume(earlier)
                continue
            trainer = last = new_trainer()
            predicted_rows += len(valid_index)
            fold = {telemetry.FOLD: number}
            with telemetry.span(f"fold {number}", fold) as fold_span:  # spans: a trial run as its own job
                toolkit.synchronize()
                tick = time.perf_counter()
                with telemetry.span("fit", fold):
                    trainer.fit(matrix[train_index], labels[train_index])
                    toolkit.synchronize()
                fitted = time.perf_counter()
                with telemetry.span("score", fold):
                    prediction = trainer.predict(matrix[valid_index])
                    toolkit.synchronize()
                    predicted = time.perf_counter()
                    scores = toolkit.score(kind.task, labels[valid_index], prediction)
                primary = {telemetry.METRIC: primary_metric, telemetry.METRIC_VALUE: float(scores[primary_metric])}
                telemetry.annotate(fold_span, primary)
            folds.record(
                scores,
                fit_seconds=fitted - tick,
                predict_seconds=predicted - fitted,
                split=split,
            )
        metrics = folds.metrics(
            engine_name=engine_name,
            rows=info.rows,
            rows_dropped=info.rows_dropped_missing_target,
            n_features=len(info.feature_names),
            folds=single_process_folds(kind.task),
        )
        metrics.update(n_jobs=n_jobs, task_reason=kind.reason)
        if plan is not None:
            metrics.update(step_unit=plan.unit, report_every=request.report_every, last_step=plan.steps[-1])
        if measure and last is not None:
            metrics["model_size_mb"] = model_megabytes(last)
            metrics["predict_ms_per_1000_rows"] = 1e6 * folds.predict_seconds / max(predicted_rows, 1)
        if output is not None:
            final = new_trainer()
            metrics["refit_seconds"] = timed_fit(final, matrix, labels, toolkit.synchronize)
            metrics["total_seconds"] = time.perf_counter() - started
            trial = rerun_arguments(
                request, data=data, target=target, seed=seed, max_rows=max_rows, task=kind.task, features=features
            )
            save_outputs(
                Path(output),
                model=model,
                estimator=final.portable(),
                metrics=metrics,
                trial={**trial, "engine": engine_name},
                encoding=info.encoding,
                target=kind,
            )
        else:
            metrics["total_seconds"] = time.perf_counter() - started
        folds.finish(metrics)
    return metrics


def in_steps(
    plan: StepPlan,
    folds: CrossValidation,
    splits: Sequence[tuple[str, Any, Any]],
    new_trainer: Callable[[], Trainer],
    matrix: Any,
    labels: Any,
    toolkit: Engine,
    task: Task,
) -> tuple[Trainer, int]:
    """Every fold in lockstep through ``plan`` (:func:`gpu_jobs.steps.lockstep`), each step reported
    through ``folds``; then each fold's final scores recorded as a fold (not reported again). Returns the
    last fold's trainer and the rows predicted in all."""

    def start(train_index: Any) -> GrowingTrainer:
        trainer = cast(GrowingTrainer, new_trainer())
        trainer.start(matrix[train_index], labels[train_index], plan.unit)
        return trainer

    def report(step: int, running: dict[str, float], last: bool) -> None:
        folds.report_step(step, running, StepMark(unit=plan.unit, last=last))

    done = lockstep(
        plan,
        splits,
        start,
        lambda rows: matrix[rows],
        lambda rows, prediction: toolkit.score(task, labels[rows], prediction),
        toolkit.synchronize,
        report,
    )
    for fold in done:
        folds.record(
            fold.scores,
            fit_seconds=fold.fit_seconds,
            predict_seconds=fold.predict_seconds,
            split=fold.split,
            report=False,
        )
    return cast(Trainer, done[-1].trainer), sum(fold.predicted_rows for fold in done)


def read_traced(
    data: str,
    target: str,
    *,
    data_format: str | None,
    max_rows: int | None,
    seed: int,
    engine: str,
    task: str,
    features: Sequence[str] | None,
) -> Dataset:
    """``load_dataset`` in a "data read" span (the trial's and the refit's), which says where it read from
    (the URI's scheme only: a path or a query may name things a trace should not carry) and how many rows."""
    scheme = data.partition("://")[0] if "://" in data else "file"
    with telemetry.span("data read", {"rapids_hpo.data.scheme": scheme}) as read:
        dataset = load_dataset(
            data,
            target,
            data_format=data_format,
            max_rows=max_rows,
            seed=seed,
            engine=engine,
            task=task,
            features=features,
        )
        telemetry.annotate(read, {"rapids_hpo.data.rows": dataset.info.rows, "rapids_hpo.engine": engine})
    return dataset


def model_arrays(model: str, toolkit: Engine, dataset: Dataset, fill: bool) -> Any:
    """The dense float32 features on the engine, NaN replaced where ``fill`` (forests; see ``model_features``)."""
    return model_features(model, toolkit, toolkit.to_array(dataset.X, np.float32), has_missing=fill)


def label_arrays(toolkit: Engine, dataset: Dataset) -> tuple[Any, np.ndarray]:
    """The labels on the engine and on the host (folds are drawn on the host, alike on both engines):
    class codes, or a regression's values."""
    labels = toolkit.to_array(dataset.y, dataset.info.target_encoding.label_dtype)
    return labels, toolkit.to_host(labels)


def fold_indices(
    toolkit: Engine, task: Task, host_labels: np.ndarray, cv_folds: int, seed: int
) -> list[tuple[str, Any, Any]]:
    """Each fold's split fingerprint and its training and validation row indices on the engine (stratified
    for classes, plain shuffled folds for a regression)."""
    splitter = fold_splitter(toolkit, task, cv_folds, seed)
    return [
        (split_fingerprint(valid, host_labels), toolkit.array.asarray(train), toolkit.array.asarray(valid))
        for train, valid in splitter.split(np.zeros((len(host_labels), 1), np.int8), host_labels)
    ]


def fit_final_model(
    *,
    data: str,
    target: str,
    model: str,
    params: dict[str, float],
    output: str | Path,
    seed: int = 0,
    engine: str = "auto",
    data_format: str | None = None,
    max_rows: int | None = None,
    n_jobs: int | None = None,
    task: str = "auto",
    features: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Fit ``model`` with ``params`` on all rows, no cross-validation (the HPO driver's refit of the best
    trial), and save it in ``output`` as :func:`run_trial` does; returns what it wrote to metrics.json."""
    started = time.perf_counter()
    if n_jobs is None:
        n_jobs = dask_worker_threads()
    request = check_request(model=model, params=params, cv_folds=2, primary_metric="accuracy", engine=engine)
    engine_name = resolve_engine(engine)
    toolkit = get_engine(engine_name)
    dataset = read_traced(
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
    kind = info.target_encoding
    if info.minority_class_rows == 0:
        raise UserError(f"target column {target!r} lacks a class in the rows used: a model would never predict it")
    trainer = make_trainer(
        model, toolkit, request.params, seed=seed, n_jobs=n_jobs, task=kind.task, n_classes=kind.n_classes
    )
    matrix = toolkit.to_array(dataset.X, np.float32)
    matrix = model_features(model, toolkit, matrix, has_missing=info.missing_feature_values > 0)
    labels = toolkit.to_array(dataset.y, kind.label_dtype)
    metrics: dict[str, Any] = {
        "rows": info.rows,
        "rows_dropped_missing_target": info.rows_dropped_missing_target,
        "n_features": len(info.feature_names),
        "engine": engine_name,
        "model": model,
        "task": kind.task,
        "task_reason": kind.reason,
        "params": request.params,
        "ignored_params": sorted(ignored_params(model, engine_name)),
        "n_jobs": n_jobs,
        "refit_seconds": timed_fit(trainer, matrix, labels, toolkit.synchronize),
    }
    metrics["total_seconds"] = time.perf_counter() - started
    trial = {
        "data": data,
        "target": target,
        "task": kind.task,
        "model": model,
        "params": request.params,
        "seed": seed,
        "max_rows": max_rows,
        "features": None if features is None else list(features),
        "engine": engine_name,
    }
    save_outputs(
        Path(output),
        model=model,
        estimator=trainer.portable(),
        metrics=metrics,
        trial=trial,
        encoding=info.encoding,
        target=kind,
    )
    return metrics


def timed_fit(trainer: Trainer, features: Any, labels: Any, synchronize: Callable[[], None]) -> float:
    """Fit ``trainer`` and return the seconds it took, device work included."""
    synchronize()
    tick = time.perf_counter()
    trainer.fit(features, labels)
    synchronize()
    return time.perf_counter() - tick


def dask_worker_threads() -> int | None:
    """The thread count of the Dask worker running this code, or None outside a worker."""
    try:
        from distributed import get_worker

        return int(get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):
        return None
